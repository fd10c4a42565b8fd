"""Claiming queued tasks for one agent: the queue's hot path.

One transaction per batch: lock candidate rows with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``), trim them to
the rollout limits of their jobs, then assign them with one UPDATE per job.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
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


_LIMITED = Q(max_in_flight__isnull=False) | Q(max_in_flight_percent__isnull=False) | Q(rate_per_minute__isnull=False)


def _open_jobs_for(agent: Agent) -> tuple[list[int], list[int]]:
    """Active 'any'-mode jobs whose target selects the agent, and active jobs with rollout limits.

    Both sets are small (a fleet runs few jobs at once), so targets are checked in Python.
    """
    jobs = Job.objects.filter(Q(mode=JobMode.ANY) | _LIMITED, state__in=ACTIVE_JOB_STATES).values_list(
        "pk",
        "mode",
        "target_agent_ids",
        "target_labels",
        "target_capabilities",
        "max_in_flight",
        "max_in_flight_percent",
        "rate_per_minute",
    )
    any_jobs, limited = [], []
    for pk, mode, ids, labels, capabilities, *limits in jobs:
        if any(limits):
            limited.append(pk)
        if mode == JobMode.ANY and matches(
            Target(ids or (), labels or {}, capabilities or ()), agent.pk, agent.labels, agent.capabilities
        ):
            any_jobs.append(pk)
    return any_jobs, limited


def claim(agent: Agent, limit: int, now: datetime, push: bool) -> list[Assignment]:
    """Assign up to ``limit`` claimable tasks to ``agent``. Call inside a transaction, agent row locked.

    ``push`` is the dispatcher's mode: the agent must be online, and each
    assignment is also written to the outbox for the bridge to publish.
    """
    if agent.admin_state != AdminState.ACTIVE:
        return []
    if push and agent.connectivity != Connectivity.ONLINE:
        return []
    any_jobs, limited = _open_jobs_for(agent)
    assignments: list[Assignment] = []
    if connection.vendor == "postgresql":
        assignments = _claim_unlimited_pg(agent, limit, any_jobs, now)
        if limited and len(assignments) < limit:
            assignments += _claim_general(agent, limit - len(assignments), now, any_jobs, only_jobs=limited)
    else:
        assignments = _claim_general(agent, limit, now, any_jobs)
    if push and assignments:
        outbox.write([outbox.to_inbox(agent.pk, "task.assign", now, task=a.as_message()) for a in assignments])
    return assignments


_CLAIM_SQL = """
WITH picked AS (
    SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
    WHERE t.state = 'queued' AND t.not_before <= %(now)s
      AND (t.agent_id = %(agent)s OR (t.agent_id IS NULL AND t.job_id = ANY(%(any_jobs)s::bigint[])))
      AND j.state IN ('scheduled', 'running')
      AND j.max_in_flight IS NULL AND j.max_in_flight_percent IS NULL AND j.rate_per_minute IS NULL
    ORDER BY t.priority DESC, t.id
    LIMIT GREATEST(0, LEAST(%(limit)s, %(max_concurrency)s - (
        SELECT count(*) FROM tasks h WHERE h.agent_id = %(agent)s AND h.state IN ('assigned', 'running'))))
    FOR UPDATE OF t SKIP LOCKED
), assigned AS (
    UPDATE tasks t SET state = 'assigned', agent_id = %(agent)s, attempt = t.attempt + 1, assigned_at = %(now)s,
        lease_expires_at = %(now)s + make_interval(secs => j.delivery_timeout_s), started_at = NULL,
        cancel_requested_at = NULL, progress = NULL, result = NULL, error = NULL, updated_at = %(now)s
    FROM picked, jobs j WHERE t.id = picked.id AND j.id = t.job_id
    RETURNING t.id, t.job_id, t.kind, t.attempt, t.priority, j.payload, j.execution_timeout_s, j.delivery_timeout_s,
        j.state AS job_state
), history AS (
    INSERT INTO task_events (task_id, kind, attempt, from_state, to_state, agent_id, message_id, data, created_at)
    SELECT id, 'assigned', attempt, 'queued', 'assigned', %(agent)s, NULL, NULL, %(now)s FROM assigned
), started AS (
    UPDATE jobs SET state = 'running', updated_at = %(now)s
    WHERE id IN (SELECT job_id FROM assigned WHERE job_state = 'scheduled') AND state = 'scheduled'
)
SELECT id, job_id, kind, attempt, payload, execution_timeout_s, delivery_timeout_s FROM assigned
ORDER BY priority DESC, id
"""


def _claim_unlimited_pg(agent: Agent, limit: int, any_jobs: list[int], now: datetime) -> list[Assignment]:
    """The hot path on PostgreSQL, in one statement: pick, assign, write history, start jobs.

    Jobs with rollout limits are left to ``_claim_general``, which needs their rows locked.
    """
    params: dict[str, Any] = {
        "now": now,
        "agent": agent.pk,
        "any_jobs": any_jobs,
        "limit": limit,
        "max_concurrency": agent.max_concurrency,
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        rows = cursor.fetchall()
    return [
        Assignment(task_id, attempt, job_id, kind, _json(payload), timeout_s, lease_s)
        for task_id, job_id, kind, attempt, payload, timeout_s, lease_s in rows
    ]


def _json(value: Any) -> Any:
    """psycopg returns jsonb decoded already; Django's cursor may hand back text."""
    return json.loads(value) if isinstance(value, str) else value


def _claim_general(
    agent: Agent, limit: int, now: datetime, any_jobs: list[int], only_jobs: list[int] | None = None
) -> list[Assignment]:
    """Any database, any job: lock candidates, trim them to their jobs' rollout budgets, assign."""
    wanted = min(limit, free_capacity(agent))
    if wanted <= 0:
        return []
    eligible = Q(agent_id=agent.pk)
    if any_jobs:
        eligible |= Q(agent_id__isnull=True, job_id__in=any_jobs)
    candidates = Task.objects.filter(
        eligible, state=TaskState.QUEUED, not_before__lte=now, job__state__in=ACTIVE_JOB_STATES
    )
    if only_jobs is not None:
        candidates = candidates.filter(job_id__in=only_jobs)
    chosen: list[Task] = []
    jobs: dict[int, Job] = {}
    budgets: dict[int, int] = {}  # limited jobs only, kept across rounds
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
        limited = [jobs[pk] for pk in sorted(new_job_ids) if jobs[pk].has_rollout_limit]
        budgets.update(_rollout_budgets(limited, jobs, now))
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
        if not trimmed or len(chosen) >= wanted:
            break
    if not chosen:
        return []
    _spend_rate_windows(jobs, chosen, now)
    return _assign(agent, chosen, jobs, now)


def _rollout_budgets(limited: list[Job], jobs: dict[int, Job], now: datetime) -> dict[int, int]:
    """How many more tasks each rate- or in-flight-limited job may start now.

    Locks those job rows and puts the fresh rows into ``jobs``: the rate window
    written back later must build on what the last committed claim left, not on
    the copy read before the lock was granted.
    """
    if not limited:
        return {}
    locked = Job.objects.select_for_update().filter(pk__in=[job.pk for job in limited]).order_by("pk")
    budgets: dict[int, int] = {}
    for job in locked:
        jobs[job.pk] = job
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


def _spend_rate_windows(jobs: dict[int, Job], chosen: list[Task], now: datetime) -> None:
    """Count this claim's assignments into each rate-limited job's one-minute window."""
    taken: dict[int, int] = defaultdict(int)
    for task in chosen:
        if jobs[task.job_id].rate_per_minute:
            taken[task.job_id] += 1
    for job_id, count in sorted(taken.items()):
        job = jobs[job_id]
        if job.rate_window_start is None or now - job.rate_window_start >= RATE_WINDOW:
            job.rate_window_start, job.rate_window_assigned = now, 0
        job.rate_window_assigned += count
        Job.objects.filter(pk=job_id).update(
            rate_window_start=job.rate_window_start, rate_window_assigned=job.rate_window_assigned
        )


def _assign(agent: Agent, chosen: list[Task], jobs: dict[int, Job], now: datetime) -> list[Assignment]:
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
    return assignments
