"""Claiming queued tasks for one agent: the queue's hot path.

One transaction per batch. On PostgreSQL, jobs without rollout limits take the
one-round-trip path of ``claim_pg`` for the tasks ranked above every rollout that
has room. Everything else locks candidate rows with ``FOR UPDATE SKIP LOCKED``
(SQLite serialises writers with ``BEGIN IMMEDIATE``), trims them to the rollout
limits of their jobs, then assigns them with one UPDATE per job. While a rollout
is open, a group of agents takes turns, one task each per turn, starting after
the agent the rollout last gave a task to, so a rollout spreads over its fleet.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from math import ceil
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q

from aegis_site.core.db import retry_on_conflict
from aegis_site.core.errors import NotFound
from broker import outbox
from broker.outbox import DirectSink
from registry.models import AdminState, Agent, Connectivity, Transport
from tasks.engine import claim_pg, history
from tasks.engine.assignment import Assignment
from tasks.engine.jobs import mark_running
from tasks.engine.targeting import Target, agent_matches, matches
from tasks.models import ACTIVE_JOB_STATES, HELD_STATES, Job, JobMode, JobState, Task, TaskEventKind, TaskState

transitions = logging.getLogger("aegis.transitions")

RATE_WINDOW = timedelta(minutes=1)
_MICROSECONDS_PER_WINDOW = RATE_WINDOW // timedelta(microseconds=1)
_MAX_ROUNDS = 3


def free_capacity(agent: Agent) -> int:
    held = Task.objects.filter(agent_id=agent.pk, state__in=HELD_STATES).count()
    return max(agent.max_concurrency - held, 0)


_LIMITED = Q(max_in_flight__isnull=False) | Q(max_in_flight_percent__isnull=False) | Q(rate_per_minute__isnull=False)


def claim_for(agent_id: str, limit: int, now: datetime, push: bool, sink: DirectSink | None = None) -> list[Assignment]:
    """Assign up to ``limit`` claimable tasks to the agent. Call inside a transaction."""
    claimed = claim_many([agent_id], limit, now, push, sink)
    if agent_id not in claimed:
        raise NotFound(f"agent {agent_id} does not exist")
    return claimed[agent_id]


def claim_many(
    agent_ids: Collection[str], limit: int, now: datetime, push: bool, sink: DirectSink | None = None
) -> dict[str, list[Assignment]]:
    """Up to ``limit`` tasks for each agent, in the caller's one transaction; agents that do not exist are left out.

    The agent rows are locked first (in id order), so claims for one agent never
    oversubscribe its capacity. ``push`` is the dispatcher's mode: the agent must
    be online, and each assignment is also written to the outbox, published after
    the commit (by ``sink``, the caller's own publisher, if it passes one; else by
    the bridge). One transaction for many agents saves a BEGIN and a COMMIT per agent.
    """
    if connection.vendor != "postgresql":
        agents = list(Agent.objects.select_for_update().filter(pk__in=list(agent_ids)).order_by("pk"))
        claimed: dict[str, list[Assignment]] = {agent.pk: [] for agent in agents}
        if agents:
            _claim_in_turns(agents, _open_jobs(), limit, now, push, claimed, sink)
    else:
        claimed, limited = claim_pg.claim_agents(list(agent_ids), limit, now, push, sink=sink)
        if limited:  # rollouts: the agents are locked already; their rows are read again for the targets
            short = [agent_id for agent_id, assignments in claimed.items() if len(assignments) < limit]
            agents = list(Agent.objects.filter(pk__in=short).order_by("pk"))
            _claim_in_turns(agents, _open_jobs(), limit, now, push, claimed, sink)
    transaction.on_commit(partial(log_assigned, claimed))
    return claimed


def dispatch(
    agent_ids: Collection[str],
    limit: int,
    now: datetime,
    sink: DirectSink | None = None,
    skip_busy: bool = False,
) -> dict[str, list[Assignment]]:
    """The dispatcher's claim (push mode) in transactions of its own: on PostgreSQL, one round trip.

    Jobs with rollout limits, when there are any, get a second transaction on
    the general path. Inside a transaction (tests), it claims in that one.
    ``sink``: the dispatcher's own publisher for the assignments (``None``: the bridge's job).
    ``skip_busy`` (PostgreSQL, outside a transaction): an agent whose row another transaction
    holds is left out of the result instead of waited for (``claim_pg``), so dispatcher
    replicas woken for the same agents do not queue behind each other's claims.
    """
    if connection.in_atomic_block:
        return claim_many(agent_ids, limit, now, push=True, sink=sink)
    if connection.vendor != "postgresql":
        return retry_on_conflict(_claim_many_atomic)(agent_ids, limit, now, sink)
    claim = retry_on_conflict(claim_pg.claim_agents)
    claimed, limited = claim(list(agent_ids), limit, now, True, True, sink, skip_locked=skip_busy)
    if limited:
        more = retry_on_conflict(_claim_limited_atomic)(sorted(claimed), limit, now, claimed, sink, skip_busy)
        for agent_id, assignments in more.items():
            claimed[agent_id] += assignments
    log_assigned(claimed)  # both transactions have committed
    return claimed


def log_assigned(claimed: dict[str, list[Assignment]]) -> None:
    """queued → assigned, one ``aegis.transitions`` line per task, like the transitions reports make.

    Logged once the claim has committed; the lines come from the assignments in hand, no query.
    """
    if not transitions.isEnabledFor(logging.INFO):  # TRANSITION_LOG_LEVEL=WARNING: not even the loop
        return
    for agent_id, assignments in claimed.items():
        for assignment in assignments:
            transitions.info(
                "task assigned",
                extra={
                    "task_id": assignment.task_id,
                    "job_id": assignment.job_id,
                    "agent_id": agent_id,
                    "attempt": assignment.attempt,
                    "from_state": TaskState.QUEUED,
                    "to_state": TaskState.ASSIGNED,
                },
            )


def _claim_many_atomic(
    agent_ids: Collection[str], limit: int, now: datetime, sink: DirectSink | None
) -> dict[str, list[Assignment]]:
    with transaction.atomic():
        return claim_many(agent_ids, limit, now, push=True, sink=sink)


def _claim_limited_atomic(
    agent_ids: list[str],
    limit: int,
    now: datetime,
    claimed: dict[str, list[Assignment]],
    sink: DirectSink | None,
    skip_busy: bool = False,
) -> dict[str, list[Assignment]]:
    with transaction.atomic():
        jobs = _open_jobs()
        short = [agent_id for agent_id in agent_ids if len(claimed[agent_id]) < limit]
        locking = Agent.objects.select_for_update(skip_locked=skip_busy)
        agents = list(locking.filter(pk__in=short).order_by("pk"))
        more: dict[str, list[Assignment]] = {agent.pk: list(claimed[agent.pk]) for agent in agents}
        _claim_in_turns(agents, jobs, limit, now, True, more, sink)
        return {agent_id: assignments[len(claimed[agent_id]) :] for agent_id, assignments in more.items()}


def _claim_in_turns(
    agents: list[Agent],
    jobs: list[OpenJob],
    limit: int,
    now: datetime,
    push: bool,
    claimed: dict[str, list[Assignment]],
    sink: DirectSink | None = None,
) -> None:
    """The general path for a group of locked agents, adding to ``claimed``.

    Without open rollouts each agent takes what fits, in id order. With them, the
    agents take turns, one task each per turn, starting after the agent the
    highest-ranked rollout last gave a task to: a freed rollout slot goes to the
    next agent in the fleet, not back to the first ones in id order.
    """
    rollouts = sorted((job for job in jobs if job.limited), key=lambda job: (-job.priority, job.id))
    if not rollouts:
        for agent in agents:
            room = limit - len(claimed[agent.pk])
            if room > 0:
                claimed[agent.pk] += _claim_general_for(agent, jobs, room, now, push, sink)
        return
    last = rollouts[0].last_agent_id
    turn = [agent for agent in agents if agent.pk > last] + [agent for agent in agents if agent.pk <= last]
    while turn:
        took = []
        for agent in turn:
            if len(claimed[agent.pk]) >= limit:
                continue
            got = _claim_general_for(agent, jobs, 1, now, push, sink)
            if got:
                claimed[agent.pk] += got
                took.append(agent)
        turn = took


def _claim_general_for(
    agent: Agent, jobs: list[OpenJob], limit: int, now: datetime, push: bool, sink: DirectSink | None
) -> list[Assignment]:
    if agent.admin_state != AdminState.ACTIVE:
        return []
    if push and (agent.connectivity != Connectivity.ONLINE or agent.transport != Transport.MQTT):
        return []
    any_jobs = [job.id for job in jobs if job.mode == JobMode.ANY and _selects(job, agent)]
    return _written(agent, _claim_general(agent, limit, now, any_jobs), now, push, sink)


@dataclass(frozen=True)
class OpenJob:
    """An active job an agent may draw from: an ``any``-mode job, or one with rollout limits."""

    id: int
    mode: str
    target_agent_ids: list[str]
    target_labels: dict[str, Any]
    target_capabilities: list[str]
    limited: bool
    priority: int
    last_agent_id: str


def _open_jobs() -> list[OpenJob]:
    """Active 'any'-mode jobs and active jobs with rollout limits: few at a time, so targets are checked in Python."""
    rows = Job.objects.filter(Q(mode=JobMode.ANY) | _LIMITED, state__in=ACTIVE_JOB_STATES).values_list(
        "pk",
        "mode",
        "target_agent_ids",
        "target_labels",
        "target_capabilities",
        "max_in_flight",
        "max_in_flight_percent",
        "rate_per_minute",
        "priority",
        "rollout_last_agent_id",
    )
    return [
        OpenJob(pk, mode, ids, labels, capabilities, any(limit is not None for limit in limits), priority, last)
        for pk, mode, ids, labels, capabilities, *limits, priority, last in rows
    ]


def _selects(job: OpenJob, agent: Agent) -> bool:
    target = Target(job.target_agent_ids or (), job.target_labels or {}, job.target_capabilities or ())
    return matches(target, agent.pk, agent.labels, agent.capabilities)


def _written(
    agent: Agent, assignments: list[Assignment], now: datetime, push: bool, sink: DirectSink | None
) -> list[Assignment]:
    if push and assignments:
        outbox.write([outbox.to_inbox(agent.pk, "task.assign", now, task=a.as_message()) for a in assignments], sink)
    return assignments


def _claim_general(agent: Agent, limit: int, now: datetime, any_jobs: list[int]) -> list[Assignment]:
    """Any database, any job: lock candidates, trim them to their jobs' rollout budgets, assign.

    A task pinned to this agent is skipped while its job's target no longer selects
    the agent (its labels or capabilities changed after the task was queued).
    """
    wanted = min(limit, free_capacity(agent))
    if wanted <= 0:
        return []
    eligible = Q(agent_id=agent.pk)
    if any_jobs:
        eligible |= Q(agent_id__isnull=True, job_id__in=any_jobs)
    candidates = Task.objects.filter(
        eligible, state=TaskState.QUEUED, not_before__lte=now, job__state__in=ACTIVE_JOB_STATES
    )
    chosen: list[Task] = []
    jobs: dict[int, Job] = {}
    budgets: dict[int, int] = {}  # limited jobs only, kept across rounds
    exhausted: set[int] = set()  # no budget left, or the job's target no longer selects this agent
    for _ in range(_MAX_ROUNDS):
        rows = list(
            candidates.exclude(job_id__in=exhausted)
            .exclude(pk__in=[task.pk for task in chosen])
            .select_for_update(no_key=True, skip_locked=True, of=("self",))
            .only("pk", "job_id", "kind", "attempt", "agent_id")
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
            if task.job_id in exhausted:
                trimmed = True
            elif task.agent_id is not None and not agent_matches(Target.of_job(jobs[task.job_id]), agent):
                exhausted.add(task.job_id)
                trimmed = True
            elif budget is None:
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
    _spend_rollouts(jobs, chosen, agent.pk, now)
    return _assign(agent, chosen, jobs, now)


def _rollout_budgets(limited: list[Job], jobs: dict[int, Job], now: datetime) -> dict[int, int]:
    """How many more tasks each rate- or in-flight-limited job may start now.

    Locks those job rows and puts the fresh rows into ``jobs``: the rate window
    written back later must build on what the last committed claim left, not on
    the copy read before the lock was granted.
    """
    if not limited:
        return {}
    locked = Job.objects.select_for_update(no_key=True).filter(pk__in=[job.pk for job in limited]).order_by("pk")
    budgets: dict[int, int] = {}
    for job in locked:
        jobs[job.pk] = job
        budget = 1 << 30
        in_flight_limit = job.in_flight_limit()
        if in_flight_limit is not None:
            in_flight = Task.objects.filter(job_id=job.pk, state__in=HELD_STATES).count()
            budget = min(budget, in_flight_limit - in_flight)
        if job.rate_per_minute:
            budget = min(budget, rate_tokens(job, now))
        budgets[job.pk] = max(budget, 0)
    return budgets


def assigned_in_window(job: Job, now: datetime) -> int:
    if job.rate_window_start is None or now - job.rate_window_start >= RATE_WINDOW:
        return 0
    return job.rate_window_assigned


def rate_burst(rate_per_minute: int) -> int:
    """The token bucket's size: one second's worth of the rate, at least one task."""
    return max(1, ceil(rate_per_minute / 60))


def rate_tokens(job: Job, now: datetime) -> int:
    """How many tasks the rate limit lets start now.

    A token bucket (kept as GCRA's one timestamp, ``rate_bucket_full_at``): it
    refills at ``rate_per_minute`` spread evenly over the minute and holds
    ``rate_burst`` tokens, so "60 per minute" is one a second, never 60 at once.
    The one-minute window (``rate_window_*``, which the admin shows) still caps
    any window at ``rate_per_minute``.
    """
    rate = job.rate_per_minute or 0
    if not rate:
        return 1 << 30
    tokens = rate_burst(rate)
    full_at = job.rate_bucket_full_at
    if full_at is not None and full_at > now:
        tokens -= ceil((full_at - now) // timedelta(microseconds=1) * rate / _MICROSECONDS_PER_WINDOW)
    return max(0, min(tokens, rate - assigned_in_window(job, now)))


def rate_buckets_waiting(now: datetime) -> list[tuple[int, datetime]]:
    """``(rate_per_minute, rate_bucket_full_at)`` of open rate-limited jobs whose bucket refills after ``now`` and
    that have queued work: the dispatcher wakes when the next of their tokens comes due."""
    rows = (
        Job.objects.filter(
            state__in=(JobState.SCHEDULED, JobState.RUNNING),
            rate_per_minute__gt=0,
            rate_bucket_full_at__gt=now,
            tasks__state=TaskState.QUEUED,
        )
        .values_list("rate_per_minute", "rate_bucket_full_at")
        .distinct()
    )
    return [(rate, full_at) for rate, full_at in rows if rate and full_at is not None]


def _spend_rollouts(jobs: dict[int, Job], chosen: list[Task], agent_id: str, now: datetime) -> None:
    """Take this claim's tokens from each rate-limited job's bucket and count them into its one-minute window;
    remember the agent as the rollout's last, so its next tasks go to the agents after this one."""
    taken: dict[int, int] = defaultdict(int)
    for task in chosen:
        if jobs[task.job_id].has_rollout_limit:
            taken[task.job_id] += 1
    for job_id, count in sorted(taken.items()):
        job = jobs[job_id]
        job.rollout_last_agent_id = agent_id
        if job.rate_per_minute:
            if job.rate_window_start is None or now - job.rate_window_start >= RATE_WINDOW:
                job.rate_window_start, job.rate_window_assigned = now, 0
            job.rate_window_assigned += count
            spent = ceil(count * _MICROSECONDS_PER_WINDOW / job.rate_per_minute)
            job.rate_bucket_full_at = max(job.rate_bucket_full_at or now, now) + timedelta(microseconds=spent)
        Job.objects.filter(pk=job_id).update(
            rate_window_start=job.rate_window_start,
            rate_window_assigned=job.rate_window_assigned,
            rate_bucket_full_at=job.rate_bucket_full_at,
            rollout_last_agent_id=agent_id,
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
