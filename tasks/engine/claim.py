"""Claiming queued tasks for one agent: the queue's hot path.

One transaction per batch: lock candidate rows with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``), trim them to
the rollout limits of their jobs, then assign them with one UPDATE per job.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Q

from broker import outbox
from registry.models import AdminState, Agent, Connectivity
from tasks.engine import history
from tasks.engine.jobs import mark_running
from tasks.engine.targeting import Target, matches
from tasks.models import ACTIVE_JOB_STATES, HELD_STATES, Job, JobMode, JobState, Task, TaskEventKind, TaskState

RATE_WINDOW = timedelta(minutes=1)
_MAX_ROUNDS = 3


@dataclass(frozen=True)
class Assignment:
    """What an agent needs to run one attempt; the ``task`` object of a ``task.assign`` message."""

    task_id: int
    attempt: int
    job_id: int
    kind: str
    payload: Any
    timeout_s: int
    lease_s: int

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.task_id,
            "attempt": self.attempt,
            "job_id": self.job_id,
            "kind": self.kind,
            "payload": self.payload,
            "timeout_s": self.timeout_s,
            "lease_s": self.lease_s,
        }


def free_capacity(agent: Agent) -> int:
    held = Task.objects.filter(agent_id=agent.pk, state__in=HELD_STATES).count()
    return max(agent.max_concurrency - held, 0)


def any_jobs_for(agent: Agent) -> list[int]:
    """Active 'any'-mode jobs whose target selects this agent (few: they are filtered in Python)."""
    jobs = Job.objects.filter(state__in=ACTIVE_JOB_STATES, mode=JobMode.ANY).values_list(
        "pk", "target_agent_ids", "target_labels", "target_capabilities"
    )
    return [
        pk
        for pk, ids, labels, capabilities in jobs
        if matches(Target(ids or (), labels or {}, capabilities or ()), agent.pk, agent.labels, agent.capabilities)
    ]


def claim(agent: Agent, limit: int, now: datetime, push: bool) -> list[Assignment]:
    """Assign up to ``limit`` claimable tasks to ``agent``. Call inside a transaction.

    ``push`` is the dispatcher's mode: the agent must be online, and each
    assignment is also written to the outbox for the bridge to publish.
    """
    if agent.admin_state != AdminState.ACTIVE:
        return []
    if push and agent.connectivity != Connectivity.ONLINE:
        return []
    wanted = min(limit, free_capacity(agent))
    if wanted <= 0:
        return []
    eligible = Q(agent_id=agent.pk)
    any_jobs = any_jobs_for(agent)
    if any_jobs:
        eligible |= Q(agent_id__isnull=True, job_id__in=any_jobs)
    candidates = Task.objects.filter(eligible, state=TaskState.QUEUED, not_before__lte=now, job__state__in=ACTIVE_JOB_STATES)

    chosen: list[Task] = []
    jobs: dict[int, Job] = {}
    exhausted: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        rows = list(
            candidates.exclude(job_id__in=exhausted)
            .exclude(pk__in=[task.pk for task in chosen])
            .select_for_update(skip_locked=True, of=("self",))
            .only("pk", "job_id", "kind", "attempt")
            .order_by("-priority", "pk")[: wanted - len(chosen)]
        )
        if not rows:
            break
        new_job_ids = {task.job_id for task in rows} - jobs.keys()
        jobs.update(Job.objects.in_bulk(sorted(new_job_ids)))
        budgets = _rollout_budgets([jobs[pk] for pk in sorted(new_job_ids) if jobs[pk].has_rollout_limit], now)
        trimmed = False
        for task in rows:
            budget = budgets.get(task.job_id)
            if budget is None:
                chosen.append(task)
            elif budget > 0:
                budgets[task.job_id] = budget - 1
                chosen.append(task)
            else:
                exhausted.add(task.job_id)
                trimmed = True
        _spend_rate_windows(jobs, rows, chosen, budgets, now)
        if not trimmed or len(chosen) >= wanted:
            break
    if not chosen:
        return []
    return _assign(agent, chosen, jobs, now, push)


def _rollout_budgets(limited: list[Job], now: datetime) -> dict[int, int]:
    """How many more tasks each rate- or in-flight-limited job may start now. Locks those job rows."""
    if not limited:
        return {}
    locked = Job.objects.select_for_update().filter(pk__in=[job.pk for job in limited]).order_by("pk")
    budgets: dict[int, int] = {}
    for job in locked:
        budget = 1 << 30
        in_flight_limit = job.in_flight_limit()
        if in_flight_limit is not None:
            in_flight = Task.objects.filter(job_id=job.pk, state__in=HELD_STATES).count()
            budget = min(budget, in_flight_limit - in_flight)
        if job.rate_per_minute:
            budget = min(budget, job.rate_per_minute - assigned_in_window(job, now))
        budgets[job.pk] = max(budget, 0)
    return budgets


def assigned_in_window(job: Job, now: datetime) -> int:
    if job.rate_window_start is None or now - job.rate_window_start >= RATE_WINDOW:
        return 0
    return job.rate_window_assigned


def _spend_rate_windows(
    jobs: dict[int, Job], rows: list[Task], chosen: list[Task], budgets: dict[int, int], now: datetime
) -> None:
    taken: dict[int, int] = defaultdict(int)
    row_ids = {task.pk for task in rows}
    for task in chosen:
        if task.pk in row_ids and task.job_id in budgets:
            taken[task.job_id] += 1
    for job_id, count in taken.items():
        job = jobs[job_id]
        if not job.rate_per_minute:
            continue
        if job.rate_window_start is None or now - job.rate_window_start >= RATE_WINDOW:
            job.rate_window_start, job.rate_window_assigned = now, 0
        job.rate_window_assigned += count
        Job.objects.filter(pk=job_id).update(
            rate_window_start=job.rate_window_start, rate_window_assigned=job.rate_window_assigned
        )


def _assign(agent: Agent, chosen: list[Task], jobs: dict[int, Job], now: datetime, push: bool) -> list[Assignment]:
    by_job: dict[int, list[int]] = defaultdict(list)
    for task in chosen:
        by_job[task.job_id].append(task.pk)
    for job_id, ids in by_job.items():
        Task.objects.filter(pk__in=ids).update(
            state=TaskState.ASSIGNED,
            agent_id=agent.pk,
            attempt=F("attempt") + 1,
            assigned_at=now,
            lease_expires_at=now + timedelta(seconds=jobs[job_id].delivery_timeout_s),
            started_at=None,
            cancel_requested_at=None,
            progress=None,
            result=None,
            error=None,
            updated_at=now,
        )
    assignments = [
        Assignment(
            task_id=task.pk,
            attempt=task.attempt + 1,
            job_id=task.job_id,
            kind=task.kind,
            payload=jobs[task.job_id].payload,
            timeout_s=jobs[task.job_id].execution_timeout_s,
            lease_s=jobs[task.job_id].delivery_timeout_s,
        )
        for task in chosen
    ]
    history.write_events(
        [
            history.event(
                a.task_id, TaskEventKind.ASSIGNED, a.attempt, now, TaskState.QUEUED, TaskState.ASSIGNED, agent.pk
            )
            for a in assignments
        ]
    )
    mark_running([job_id for job_id in by_job if jobs[job_id].state == JobState.SCHEDULED], now)
    if push:
        outbox.write([outbox.to_inbox(agent.pk, "task.assign", now, task=a.as_message()) for a in assignments])
    return assignments
