"""Operator controls: cancel, retry, pause and resume."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F

from tasks.engine import history
from tasks.engine.errors import InvalidTransition, NotFound
from tasks.engine.jobs import cancel_tasks, settle
from tasks.engine.lifecycle import save_tasks
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


def lock_job(job_id: int) -> Job:
    try:
        return Job.objects.select_for_update().get(pk=job_id)
    except Job.DoesNotExist:
        raise NotFound(f"job {job_id} does not exist") from None


def lock_task(task_id: int) -> Task:
    try:
        return Task.objects.select_for_update().get(pk=task_id)
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
    cancel_tasks(job.tasks.all(), now, force=force, reason="job canceled by operator", actor=actor)
    # Whatever the roll-up just concluded, the operator's word is final.
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


def retry_tasks(job: Job, task_ids: list[int] | None, actor: str, now: datetime, include_canceled: bool = False) -> int:
    """Queue failed (and timed-out) tasks of ``job`` again with a fresh set of attempts.

    ``task_ids`` narrows it to a subset. A job that had ended opens again. Returns
    how many tasks were queued.
    """
    states = [*RETRYABLE_STATES, TaskState.CANCELED] if include_canceled else list(RETRYABLE_STATES)
    tasks = job.tasks.filter(state__in=states)
    if task_ids is not None:
        tasks = tasks.filter(pk__in=task_ids)
    locked = list(tasks.select_for_update().order_by("pk"))
    if not locked:
        return 0
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
                data={"by": actor, "max_attempts": task.max_attempts},
            )
        )
    save_tasks(locked)
    history.write_events(events)
    reopened = JobState.RUNNING if job.state not in (JobState.SCHEDULED, JobState.PAUSED) else job.state
    Job.objects.filter(pk=job.pk).update(
        tasks_failed=F("tasks_failed") - failed,
        tasks_canceled=F("tasks_canceled") - canceled,
        state=reopened,
        finished_at=None,
        updated_at=now,
    )
    return len(locked)


def retry_task(task_id: int, actor: str, now: datetime) -> Task:
    task = lock_task(task_id)
    if task.state not in (*RETRYABLE_STATES, TaskState.CANCELED):
        raise InvalidTransition(f"task {task_id} is {task.state}; only failed, timed-out or canceled tasks retry")
    job = lock_job(task.job_id)
    if job.state == JobState.CANCELED:
        raise InvalidTransition(f"job {job.pk} is canceled; clone it instead")
    retry_tasks(job, [task_id], actor, now, include_canceled=True)
    task.refresh_from_db()
    return task
