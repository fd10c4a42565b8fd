"""Bringing the server's view of an agent in line with what the agent says it runs (on every hello)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker import outbox
from broker.models import OutboxMessage
from tasks.engine import history
from tasks.engine.claim import Assignment
from tasks.engine.jobs import count_terminal, record_terminal, tell_failed
from tasks.engine.lifecycle import end_attempt, save_tasks
from tasks.models import HELD_STATES, TERMINAL_STATES, Task, TaskEventKind, TaskState


@dataclass
class Reconciliation:
    resent: list[int] = field(default_factory=list)  # assigned here, unknown there: assignment sent again
    lost: list[int] = field(default_factory=list)  # running here, unknown there: the attempt is over
    canceled: list[int] = field(default_factory=list)  # running there, not ours any more: cancel sent
    finishing: list[int] = field(default_factory=list)  # held here, finished there: its result is on the way


Holding = tuple[set[tuple[int, int]], frozenset[tuple[int, int]]]  # what an agent runs, what it finished


def reconcile(
    agent_id: str,
    running: set[tuple[int, int]],
    now: datetime,
    finished: frozenset[tuple[int, int]] = frozenset(),
) -> Reconciliation:
    """One agent's hello (``reconcile_agents``)."""
    return reconcile_agents({agent_id: (running, finished)}, now)[agent_id]


def reconcile_agents(holdings: Mapping[str, Holding], now: datetime) -> dict[str, Reconciliation]:
    """Compare the tasks held for each agent with the ``(task_id, attempt)`` pairs it runs and finished.

    - assigned here but not there: the assignment was lost on the way; send it again
      (same attempt, so a copy that does arrive twice is dropped by the agent) and
      restart the delivery lease;
    - running here but not there: the agent restarted and lost the work; that
      attempt ends like a failure (requeued with backoff while attempts are left);
    - running there but not held here for that attempt: the task was canceled,
      timed out or reassigned meanwhile; tell the agent to stop (force);
    - listed in ``finished`` (the agent has the result but no acknowledgement of it
      yet, e.g. after a broker restart its hello overtakes the buffered result): left
      as it is, so the result that follows applies instead of being refused as stale.
    Many agents at once (a reconnect storm's hellos, one bridge batch): one locking read of
    their tasks in id order and one write of each kind. Call inside a transaction.
    """
    held: dict[str, list[Task]] = {agent_id: [] for agent_id in holdings}
    for task in (
        Task.objects.select_for_update(no_key=True)
        .select_related("job")
        .filter(agent_id__in=list(holdings), state__in=HELD_STATES)
        .order_by("pk")
    ):
        held[str(task.agent_id)].append(task)
    writes = _Writes()
    results = {
        agent_id: _reconcile_one(agent_id, held[agent_id], running, finished, now, writes)
        for agent_id, (running, finished) in holdings.items()
    }
    save_tasks(writes.changed)
    history.write_events(writes.events)
    outbox.write(writes.messages)
    tell_failed(writes.changed, now)
    terminal = count_terminal((t.job_id, t.state) for t in writes.changed if t.state in TERMINAL_STATES)
    record_terminal(terminal, now)
    return results


@dataclass
class _Writes:
    """What a reconciliation writes, gathered over all its agents and written once."""

    changed: list[Task] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    messages: list[OutboxMessage] = field(default_factory=list)


def _reconcile_one(
    agent_id: str,
    held: list[Task],
    running: set[tuple[int, int]],
    finished: frozenset[tuple[int, int]],
    now: datetime,
    writes: _Writes,
) -> Reconciliation:
    result = Reconciliation()
    for task in held:
        if (task.pk, task.attempt) in running:
            continue
        if (task.pk, task.attempt) in finished:
            result.finishing.append(task.pk)
            continue
        job = task.job
        writes.changed.append(task)
        if task.state == TaskState.ASSIGNED:
            task.lease_expires_at = now + timedelta(seconds=job.delivery_timeout_s)
            task.updated_at = now
            assignment = Assignment(
                task.pk, task.attempt, job.pk, task.kind, job.payload, job.execution_timeout_s, job.delivery_timeout_s
            )
            writes.messages.append(outbox.to_inbox(agent_id, "task.assign", now, task=assignment.as_message()))
            writes.events.append(
                history.event(task.pk, TaskEventKind.RESENT, task.attempt, now, task.state, task.state, agent_id)
            )
            result.resent.append(task.pk)
            continue
        error = {"code": "agent_lost", "message": "the agent reconnected without this task"}
        end_attempt(task, job, now, TaskState.FAILED, error)
        data: dict[str, object] = {"error": error}
        if task.state == TaskState.QUEUED:
            data["retry_at"] = task.not_before.isoformat()
        lost = history.event(
            task.pk, TaskEventKind.AGENT_LOST, task.attempt, now, TaskState.RUNNING, task.state, agent_id, data=data
        )
        writes.events.append(lost)
        result.lost.append(task.pk)
    ours = {(task.pk, task.attempt) for task in held}
    for task_id, attempt in sorted(running - ours):
        writes.messages.append(
            outbox.to_inbox(agent_id, "task.cancel", now, task_id=task_id, attempt=attempt, force=True)
        )
        result.canceled.append(task_id)
    return result
