"""Tasks whose recorded state contradicts reality, and ending such an attempt by hand.

The dispatcher ends expired leases on its own and an agent's hello reconciles what
it runs. What is left for an operator to see: held tasks on agents that went
offline (their leases still run), and expired leases nobody handled (the
dispatcher is down or behind).

Ending an attempt here is the lease-expiry path brought forward: the attempt
number stays, so a late report of that attempt is fenced off, the next assignment
gets a new attempt, and the old agent is told to stop the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet

from aegis_site.core.errors import InvalidTransition
from broker import outbox
from registry.models import Agent, Connectivity
from tasks.engine import history
from tasks.engine.control import lock_task
from tasks.engine.jobs import count_terminal, record_terminal, tell_failed
from tasks.engine.lifecycle import end_attempt, save_tasks
from tasks.models import HELD_STATES, TERMINAL_STATES, Job, Task, TaskEventKind, TaskState

# A lease that ran out a moment ago is the dispatcher's next pass, not a contradiction.
HANDLING_GRACE = timedelta(seconds=10)


def _on_offline_agent(now: datetime) -> QuerySet[Task]:
    return Task.objects.filter(state__in=HELD_STATES, agent__connectivity=Connectivity.OFFLINE)


def _delivery_overdue(now: datetime) -> QuerySet[Task]:
    return Task.objects.filter(state=TaskState.ASSIGNED, lease_expires_at__lt=now - HANDLING_GRACE)


def _lease_expired(now: datetime) -> QuerySet[Task]:
    return Task.objects.filter(state=TaskState.RUNNING, lease_expires_at__lt=now - HANDLING_GRACE)


@dataclass(frozen=True)
class Group:
    """One kind of contradiction: a name and an explanation for the page, and the query that finds it."""

    code: str
    title: str
    help: str
    find: Callable[[datetime], QuerySet[Task]]

    def tasks(self, now: datetime) -> QuerySet[Task]:
        """Oldest lease first: the partial index on held leases serves both the filter and the order."""
        return self.find(now).order_by("lease_expires_at", "id")


GROUPS = (
    Group(
        "offline_agent",
        "Held by an offline agent",
        "Assigned or running on an agent that is offline; the task waits for its lease to run out.",
        _on_offline_agent,
    ),
    Group(
        "delivery_overdue",
        "Assigned past the delivery timeout",
        "The agent never accepted the task and the dispatcher has not put it back in the queue.",
        _delivery_overdue,
    ),
    Group(
        "lease_expired",
        "Running with an expired lease",
        "No progress within the execution timeout and the dispatcher has not handled the expiry.",
        _lease_expired,
    ),
)


def end_held_attempt(task_id: int, attempt: int, actor: str, now: datetime) -> tuple[Task, str]:
    """End ``attempt`` of a held task whose agent is offline or whose lease ran out. Call inside a transaction.

    ``attempt`` is the one the operator saw: a task that moved on since (new attempt,
    accepted, finished) is refused rather than cut short. A task on an online agent
    with a running lease is refused too: that is what cancel is for. Returns the task
    and the reason (``lease_expired`` or ``agent_offline``).
    """
    task = lock_task(task_id)
    if task.state not in HELD_STATES or task.attempt != attempt:
        raise InvalidTransition(
            f"task {task_id} moved on (now {task.state}, attempt {task.attempt}); there is nothing to fix"
        )
    lease_expired = task.lease_expires_at is not None and task.lease_expires_at < now
    if not lease_expired and _agent_online(task.agent_id):
        raise InvalidTransition(
            f"task {task_id} is {task.state} on online agent {task.agent_id} with its lease running; cancel it instead"
        )
    previous, agent_id = task.state, task.agent_id
    kind, terminal, error = _ending(previous, lease_expired)
    end_attempt(task, Job.objects.get(pk=task.job_id), now, terminal, error)
    data: dict[str, Any] = {"error": error, "by": actor}
    if task.state == TaskState.QUEUED:
        data["retry_at"] = task.not_before.isoformat()
    save_tasks([task])
    history.write_events([history.event(task.pk, kind, attempt, now, previous, task.state, agent_id, data=data)])
    if agent_id:
        # Should the agent still run the old attempt, it stops: the task must not run twice.
        outbox.write([outbox.to_inbox(agent_id, "task.cancel", now, task_id=task.pk, attempt=attempt, force=True)])
    tell_failed([task], now)
    if task.state in TERMINAL_STATES:
        record_terminal(count_terminal([(task.job_id, task.state)]), now)
    return task, "lease_expired" if lease_expired else "agent_offline"


def _agent_online(agent_id: str | None) -> bool:
    return agent_id is not None and Agent.objects.filter(pk=agent_id, connectivity=Connectivity.ONLINE).exists()


def _ending(state: str, lease_expired: bool) -> tuple[str, str, dict[str, str]]:
    """The history kind, the final state without attempts left, and the error, as expiry and reconcile write them."""
    if not lease_expired:
        error = {"code": "agent_offline", "message": "attempt ended by an operator: the agent is offline"}
        return TaskEventKind.AGENT_LOST, TaskState.FAILED, error
    if state == TaskState.ASSIGNED:
        return (
            TaskEventKind.DELIVERY_TIMEOUT,
            TaskState.TIMED_OUT,
            {"code": "delivery_timeout", "message": "not accepted in time"},
        )
    return (
        TaskEventKind.EXECUTION_TIMEOUT,
        TaskState.TIMED_OUT,
        {"code": "execution_timeout", "message": "lease expired"},
    )
