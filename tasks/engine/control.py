"""Operator controls: cancel, retry, pause and resume."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, QuerySet

from aegis_site.core.errors import InvalidTransition, NotFound
from tasks import signals
from tasks.engine import history
from tasks.engine.backoff import backoff_ceiling
from tasks.engine.jobs import cancel_tasks, settle
from tasks.engine.lifecycle import MUTABLE_FIELDS, save_tasks
from tasks.models import (
    OPEN_JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    Task,
    TaskEventKind,
    TaskState,
)

RETRYABLE_STATES = (TaskState.FAILED, TaskState.TIMED_OUT)
MAX_RANGES = 5  # distinct attempt ranges named in attempts_allowed


@dataclass(frozen=True)
class RetryAllowance:
    """What a retry gives (or would give) the tasks: ``more_attempts`` each, numbered on from their last attempt.

    ``ranges``: the distinct (next attempt, last allowed attempt) pairs, lowest first.
    ``next_backoff``: the wait after the lowest next attempt if it fails too, as (min, max)
    seconds (jitter draws in between); ``None`` when that attempt is the last one.
    """

    retried: int
    more_attempts: int
    ranges: list[tuple[int, int]]
    reset_backoff: bool
    next_backoff: tuple[float, float] | None

    @property
    def attempts_allowed(self) -> str:
        shown = [f"{first}-{last}" if first != last else str(first) for first, last in self.ranges[:MAX_RANGES]]
        more = len(self.ranges) - MAX_RANGES
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    @property
    def next_attempt(self) -> int | None:
        return self.ranges[0][0] if self.ranges else None

    @property
    def max_attempts(self) -> int | None:
        return max(last for _, last in self.ranges) if self.ranges else None

    @property
    def reason(self) -> str:
        plural = "s" if self.more_attempts != 1 else ""
        return f"{self.more_attempts} more attempt{plural}: the job's max_attempts"

    @property
    def numbering(self) -> str:
        """For people: "attempt 5 of 7 next" (or "attempts 2-5 of 4-7 next" for tasks that differ)."""
        if not self.ranges:
            return "nothing to retry"
        firsts = sorted({first for first, _ in self.ranges})
        lasts = sorted({last for _, last in self.ranges})
        if len(self.ranges) == 1:
            return f"attempt {firsts[0]} of {lasts[0]} next"
        return f"attempts {firsts[0]}-{firsts[-1]} of {lasts[0]}-{lasts[-1]} next"

    def as_dict(self) -> dict[str, Any]:
        return {
            "retried": self.retried,
            "more_attempts": self.more_attempts,
            "attempts_allowed": self.attempts_allowed,
            "next_attempt": self.next_attempt,
            "max_attempts": self.max_attempts,
            "reason": self.reason,
            "reset_backoff": self.reset_backoff,
            "next_backoff": (
                {"min_s": self.next_backoff[0], "max_s": self.next_backoff[1]} if self.next_backoff else None
            ),
        }


def retry_allowance(job: Job, tasks: list[Task], reset_backoff: bool) -> RetryAllowance:
    """What retrying ``tasks`` of ``job`` gives them (computed before they change)."""
    ranges = sorted({(task.attempt + 1, task.attempt + job.max_attempts) for task in tasks})
    next_backoff = None
    if tasks and job.max_attempts > 1:
        lowest = min(tasks, key=lambda task: task.attempt)
        start = lowest.attempt if reset_backoff else lowest.backoff_from_attempt
        ceiling = backoff_ceiling(lowest.attempt + 1 - start, job.backoff_base_s, job.backoff_cap_s)
        next_backoff = (ceiling / 2, ceiling)
    return RetryAllowance(len(tasks), job.max_attempts, ranges, reset_backoff, next_backoff)


def retryable_tasks(job: Job, task_ids: list[int] | None, include_canceled: bool = False) -> QuerySet[Task]:
    states = [*RETRYABLE_STATES, TaskState.CANCELED] if include_canceled else list(RETRYABLE_STATES)
    tasks = job.tasks.filter(state__in=states)
    return tasks if task_ids is None else tasks.filter(pk__in=task_ids)


def lock_job(job_id: int) -> Job:
    try:
        return Job.objects.select_for_update(no_key=True).get(pk=job_id)
    except Job.DoesNotExist:
        raise NotFound(f"job {job_id} does not exist") from None


def lock_task(task_id: int) -> Task:
    try:
        return Task.objects.select_for_update(no_key=True).get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"task {task_id} does not exist") from None


def cancel_task(task_id: int, force: bool, actor: str, now: datetime) -> Task:
    task = lock_task(task_id)
    if task.state in TERMINAL_STATES:
        raise InvalidTransition(f"task {task_id} is already {task.state}")
    if task.cancel_requested_at is not None and not force:
        raise InvalidTransition(f"task {task_id} already has a cancel pending; use force to end it now")
    cancel_tasks(Task.objects.filter(pk=task_id), now, force=force, reason="canceled by operator", actor=actor)
    task.refresh_from_db()
    return task


def cancel_job(job_id: int, force: bool, actor: str, now: datetime) -> Job:
    """Cancel the job's open tasks, then close the job.

    Tasks are locked before the job row, the order every other writer uses, so a
    cancel does not deadlock with agents reporting on the same job.
    """
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    if job.state not in OPEN_JOB_STATES:
        raise InvalidTransition(f"job {job_id} is already {job.state}")
    # Whatever the roll-up would conclude, the operator's word is final (and the job.finished event says canceled).
    cancel_tasks(
        job.tasks.all(), now, force=force, reason="job canceled by operator", actor=actor, closing=JobState.CANCELED
    )
    Job.objects.filter(pk=job_id).update(state=JobState.CANCELED, updated_at=now)
    job.refresh_from_db()
    settle(job, now)
    job.refresh_from_db()
    return job


def pause_job(job_id: int, now: datetime) -> Job:
    job = lock_job(job_id)
    if job.state not in (JobState.SCHEDULED, JobState.RUNNING):
        raise InvalidTransition(f"job {job_id} is {job.state}; only a scheduled or running job can be paused")
    Job.objects.filter(pk=job_id).update(state=JobState.PAUSED, updated_at=now)
    signals.job_paused.send(Job, job_id=job_id, at=now)
    job.refresh_from_db()
    return job


def resume_job(job_id: int, now: datetime) -> Job:
    job = lock_job(job_id)
    if job.state != JobState.PAUSED:
        raise InvalidTransition(f"job {job_id} is {job.state}, not paused")
    started = job.tasks.exclude(attempt=0).exists()
    Job.objects.filter(pk=job_id).update(state=JobState.RUNNING if started else JobState.SCHEDULED, updated_at=now)
    job.refresh_from_db()
    return job


def retry_tasks(
    job: Job,
    task_ids: list[int] | None,
    actor: str,
    now: datetime,
    include_canceled: bool = False,
    reset_backoff: bool = False,
) -> RetryAllowance:
    """Queue failed (and timed-out) tasks of ``job`` again with a fresh set of attempts.

    Each gets the job's ``max_attempts`` more, numbered on from its last attempt (the
    history keeps every attempt apart). ``reset_backoff``: the delays between the new
    attempts start again from ``backoff_base_s`` instead of growing on from the attempt
    number. ``task_ids`` narrows it to a subset. A job that had ended opens again.
    """
    locked = list(retryable_tasks(job, task_ids, include_canceled).select_for_update(no_key=True).order_by("pk"))
    allowance = retry_allowance(job, locked, reset_backoff)
    if not locked:
        return allowance
    failed = canceled = 0
    events = []
    for task in locked:
        previous = task.state
        if previous == TaskState.CANCELED:
            canceled += 1
        else:
            failed += 1
        task.state = TaskState.QUEUED
        task.max_attempts = task.attempt + job.max_attempts
        if reset_backoff:
            task.backoff_from_attempt = task.attempt
        task.not_before = now
        task.lease_expires_at = None
        task.cancel_requested_at = None
        task.finished_at = None
        task.updated_at = now
        if not task.pinned:
            task.agent_id = None
        events.append(
            history.event(
                task.pk,
                TaskEventKind.RETRIED,
                task.attempt,
                now,
                previous,
                TaskState.QUEUED,
                task.agent_id,
                data={
                    "by": actor,
                    "max_attempts": task.max_attempts,
                    "more_attempts": job.max_attempts,
                    "reset_backoff": reset_backoff,
                },
            )
        )
    save_tasks(locked, (*MUTABLE_FIELDS, "backoff_from_attempt"))
    history.write_events(events)
    reopened = JobState.RUNNING if job.state not in (JobState.SCHEDULED, JobState.PAUSED) else job.state
    Job.objects.filter(pk=job.pk).update(
        tasks_failed=F("tasks_failed") - failed,
        tasks_canceled=F("tasks_canceled") - canceled,
        state=reopened,
        finished_at=None,
        updated_at=now,
    )
    return allowance


def retry_task(task_id: int, actor: str, now: datetime, reset_backoff: bool = False) -> tuple[Task, RetryAllowance]:
    task = lock_task(task_id)
    if task.state not in (*RETRYABLE_STATES, TaskState.CANCELED):
        raise InvalidTransition(f"task {task_id} is {task.state}; only failed, timed-out or canceled tasks retry")
    job = lock_job(task.job_id)
    if job.state == JobState.CANCELED:
        raise InvalidTransition(f"job {job.pk} is canceled; clone it instead")
    allowance = retry_tasks(job, [task_id], actor, now, include_canceled=True, reset_backoff=reset_backoff)
    task.refresh_from_db()
    return task, allowance
