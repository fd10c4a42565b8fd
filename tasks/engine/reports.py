"""Agent reports (accepted, progress, succeeded, failed, rejected) applied in batches with attempt fencing.

A report counts only if it comes from the agent that holds the task, names the
current attempt, and the task is still held. Anything else is written to the
history as ``stale`` and changes nothing. Reports carrying a message id are
stored once per (agent, message id): a redelivered message is recognised and
skipped. Ids are the agents' own, so an id only ever shadows the same agent's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q

from aegis_site.core import counters
from registry.models import AdminState, Agent, Connectivity
from tasks.engine import history
from tasks.engine.jobs import count_terminal, record_terminal, tell_failed
from tasks.engine.lifecycle import end_attempt, save_tasks
from tasks.engine.targeting import Target, agent_matches
from tasks.models import (
    ACTIVE_JOB_STATES,
    HELD_STATES,
    TERMINAL_STATES,
    Job,
    JobMode,
    Task,
    TaskEvent,
    TaskEventKind,
    TaskState,
)

REPORT_KINDS = ("accepted", "progress", "succeeded", "failed", "rejected")

transitions = logging.getLogger("aegis.transitions")


# What a report may change, and what it reads besides; the job's policy comes along in the same query.
_WRITTEN = (
    "state",
    "agent_id",
    "not_before",
    "lease_expires_at",
    "progress",
    "result",
    "error",
    "started_at",
    "finished_at",
    "updated_at",
)
_LOADED = (
    "pk",
    *_WRITTEN,
    "job_id",
    "pinned",
    "attempt",
    "max_attempts",
    "cancel_requested_at",
    "backoff_from_attempt",
    "job__backoff_base_s",
    "job__backoff_cap_s",
    "job__execution_timeout_s",
)


@dataclass(slots=True)
class _LockedTask:
    """The columns a report reads and writes, without a model instance per row (a batch builds hundreds)."""

    pk: int
    state: str
    agent_id: str | None
    not_before: datetime
    lease_expires_at: datetime | None
    progress: Any
    result: Any
    error: Any
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    job_id: int
    pinned: bool
    attempt: int
    max_attempts: int
    cancel_requested_at: datetime | None
    backoff_from_attempt: int  # retry delays count from here (an operator's retry may reset them)
    job: JobPolicy


@dataclass(frozen=True, slots=True)
class JobPolicy:
    backoff_base_s: float
    backoff_cap_s: float
    execution_timeout_s: int


@dataclass(frozen=True)
class Report:
    kind: str
    task_id: int
    attempt: int
    message_id: str | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    retryable: bool = True
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    task_id: int
    status: str  # applied | duplicate | stale | not_found
    state: str = ""
    detail: str = ""


@dataclass
class _Batch:
    now: datetime
    events: list[tuple[Any, ...]] = field(default_factory=list)
    changed: dict[int, _LockedTask] = field(default_factory=dict)


def apply_reports(agent_id: str, reports: list[Report], now: datetime) -> list[Outcome]:
    """Apply one agent's reports in order. Call inside a transaction."""
    return apply_agents_reports([(agent_id, report) for report in reports], now)


def apply_agents_reports(items: list[tuple[str, Report]], now: datetime) -> list[Outcome]:
    """Apply ``(reporting agent, report)`` pairs in order, from any number of agents, with one set of statements.

    Call inside a transaction. The bridge's batches mix many agents: applying them
    together costs five statements per batch instead of five per agent.
    """
    seen = _known_messages({(agent_id, r.message_id) for agent_id, r in items if r.message_id})
    locked = (
        Task.objects.select_for_update(no_key=True, of=("self",))
        .filter(pk__in_array=sorted({r.task_id for _, r in items}))
        .order_by("pk")
        .values_list(*_LOADED)
    )
    policies: dict[tuple[Any, ...], JobPolicy] = {}
    tasks = {}
    for row in locked:
        values: tuple[Any, ...] = tuple(row)
        policy = policies.setdefault(values[-3:], JobPolicy(*values[-3:]))
        # The row holds the _LOADED columns: every _LockedTask field but the job, in order.
        tasks[values[0]] = _LockedTask(*values[:-3], policy)  # type: ignore[call-arg]
    batch = _Batch(now=now)
    outcomes = []
    for agent_id, report in items:
        if report.message_id:
            if (agent_id, report.message_id) in seen:
                outcomes.append(Outcome(report.task_id, "duplicate"))
                continue
            seen.add((agent_id, report.message_id))
        task = tasks.get(report.task_id)
        if task is None or (task.agent_id != agent_id and not _ever_held(task, agent_id, report.attempt)):
            outcomes.append(Outcome(report.task_id, "not_found"))
            continue
        outcomes.append(_apply(batch, task, agent_id, report))
    save_tasks(list(batch.changed.values()), _WRITTEN)
    history.write_events(batch.events)
    tell_failed(batch.changed.values(), now)
    record_terminal(
        count_terminal((t.job_id, t.state) for t in batch.changed.values() if t.state in TERMINAL_STATES), now
    )
    return outcomes


def _known_messages(wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (agent, message id) pairs among ``wanted`` already stored, in one query for the whole batch.

    The query asks for every wanted id from every wanted agent (a superset, read from the
    unique ``(message_id, agent_id)`` index); only the exact pairs count.
    """
    if not wanted:
        return set()
    stored = TaskEvent.objects.filter(
        message_id__in_array=sorted({message_id for _, message_id in wanted}),
        agent_id__in_array=sorted({agent_id for agent_id, _ in wanted}),
    ).values_list("agent_id", "message_id")
    return wanted.intersection(stored)


def _ever_held(task: _LockedTask, agent_id: str, attempt: int) -> bool:
    return TaskEvent.objects.filter(
        task_id=task.pk, kind=TaskEventKind.ASSIGNED, agent_id=agent_id, attempt=attempt
    ).exists()


def _stale_reason(task: _LockedTask, agent_id: str, report: Report) -> str:
    if task.agent_id != agent_id:
        return "task is no longer held by this agent"
    if report.attempt != task.attempt:
        return f"attempt {report.attempt} is not the current attempt {task.attempt}"
    if task.state not in HELD_STATES:
        return f"task is {task.state}"
    if report.kind == "accepted" and task.state == TaskState.RUNNING:
        return "already accepted"
    return ""


def _apply(batch: _Batch, task: _LockedTask, agent_id: str, report: Report) -> Outcome:
    job = task.job
    now = batch.now
    stale = _stale_reason(task, agent_id, report)
    if stale:
        batch.events.append(
            history.event(
                task.pk,
                TaskEventKind.STALE,
                report.attempt,
                now,
                task.state,
                task.state,
                agent_id,
                report.message_id,
                {"report": report.kind, "reason": stale},
            )
        )
        return Outcome(task.pk, "stale", task.state, stale)
    previous = task.state
    data: dict[str, Any] | None = None
    if report.kind in ("accepted", "progress"):
        task.state = TaskState.RUNNING
        task.started_at = task.started_at or now
        task.lease_expires_at = now + timedelta(seconds=job.execution_timeout_s)
        if report.kind == "progress":
            task.progress = report.progress
            data = report.progress
    elif report.kind == "succeeded":
        task.state = TaskState.SUCCEEDED
        task.started_at = task.started_at or now
        task.result = report.result
        task.lease_expires_at = None
        task.finished_at = now
    elif report.kind == "failed":
        data = {"error": report.error, "retryable": report.retryable}
        end_attempt(task, job, now, TaskState.FAILED, report.error, report.retryable)
    else:  # rejected
        error = {"code": "rejected", "message": report.reason or "rejected by agent"}
        data = {"error": error}
        end_attempt(task, job, now, TaskState.FAILED, error, retryable=True)
    task.updated_at = now
    if task.state == TaskState.QUEUED and data is not None:
        data["retry_at"] = task.not_before.isoformat()
    _observe(task, previous, agent_id, report)
    batch.changed[task.pk] = task
    batch.events.append(
        history.event(
            task.pk, report.kind, report.attempt, now, previous, task.state, agent_id, report.message_id, data
        )
    )
    return Outcome(task.pk, "applied", task.state)


def _observe(task: _LockedTask, previous: str, agent_id: str, report: Report) -> None:
    """The transition, for the logs (``aegis.transitions`` at INFO) and the metrics."""
    if task.state == previous:
        return
    transitions.info(
        "task %s",
        task.state,
        extra={
            "task_id": task.pk,
            "job_id": task.job_id,
            "agent_id": agent_id,
            "attempt": report.attempt,
            "from_state": previous,
            "to_state": task.state,
        },
    )
    if task.state == TaskState.QUEUED:
        counters.TASK_RETRIES.inc()
    elif task.state in TERMINAL_STATES and task.started_at is not None and task.finished_at is not None:
        counters.TASK_DURATION.labels(task.state).observe((task.finished_at - task.started_at).total_seconds())


_REFILL_SCAN = 200  # agents examined per rollout for the next takers; the dispatcher's own pass finds the rest


def refill_hints(ended_task_ids: Collection[int], now: datetime) -> set[str]:
    """The agents that can take the next tasks of the rollouts these tasks (just ended or requeued) belonged to.

    A finished task frees a slot in its job's ``max_in_flight``; naming the agents
    of the job's next tasks in the dispatcher's wake-up fills that slot at once,
    instead of at the dispatcher's next look at the whole queue. A pinned next
    task names its agent; an ``any`` job names agents its target selects, online
    and with room, starting after the agent the rollout last served.
    """
    if not ended_task_ids:
        return set()
    limited = Q(max_in_flight__isnull=False) | Q(max_in_flight_percent__isnull=False)
    jobs = list(Job.objects.filter(limited, state__in=ACTIVE_JOB_STATES, tasks__pk__in=list(ended_task_ids)).distinct())
    if not jobs:  # the common case on the bridge's hot path: no rollout among them, one query
        return set()
    freed = Counter(Task.objects.filter(pk__in=list(ended_task_ids)).values_list("job_id", flat=True))
    agents: set[str] = set()
    for job in jobs:
        queued = Task.objects.filter(job_id=job.pk, state=TaskState.QUEUED, not_before__lte=now)
        wanted = freed[job.pk]
        if job.mode == JobMode.EACH:
            pinned = queued.order_by("-priority", "pk").values_list("agent_id", flat=True)[:wanted]
            agents.update(agent_id for agent_id in pinned if agent_id)
        elif queued.exists():
            agents.update(_next_takers(job, wanted))
    return agents


def _next_takers(job: Job, wanted: int) -> list[str]:
    """Up to ``wanted`` agents the job's target selects that could take a task now, after its last served agent."""
    ready = Agent.objects.filter(connectivity=Connectivity.ONLINE, admin_state=AdminState.ACTIVE).only(
        "id", "labels", "capabilities", "max_concurrency"
    )
    last = job.rollout_last_agent_id
    scanned = [
        *ready.filter(pk__gt=last).order_by("pk")[:_REFILL_SCAN],
        *ready.filter(pk__lte=last).order_by("pk")[:_REFILL_SCAN],
    ]
    target = Target.of_job(job)
    matching = [agent for agent in scanned if agent_matches(target, agent)]
    held = dict(
        Task.objects.filter(agent_id__in=[agent.pk for agent in matching], state__in=HELD_STATES)
        .values("agent_id")
        .annotate(n=Count("pk"))
        .values_list("agent_id", "n")
    )
    return [agent.pk for agent in matching if held.get(agent.pk, 0) < agent.max_concurrency][:wanted]
