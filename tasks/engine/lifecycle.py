"""What happens to one task when an attempt ends without success. Mutates the instance; the caller saves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tasks.engine.backoff import backoff_delay
from tasks.models import Task, TaskState

# Fields the engine rewrites when a task changes state; saved together by ``save_tasks``.
MUTABLE_FIELDS = (
    "state",
    "agent",
    "attempt",
    "max_attempts",
    "not_before",
    "lease_expires_at",
    "cancel_requested_at",
    "progress",
    "result",
    "error",
    "assigned_at",
    "started_at",
    "finished_at",
    "updated_at",
)


def end_attempt(
    task: Any,
    job: Any,
    now: datetime,
    terminal_state: str,
    error: dict[str, Any] | None,
    retryable: bool = True,
) -> str:
    """Requeue with backoff while attempts are left, else end in ``terminal_state``. Returns the new state.

    ``task`` is a ``Task`` or a row object with the same attributes; ``job`` anything
    with the job's backoff policy.

    A task whose cancel was requested ends canceled, whatever the agent reported.
    """
    task.error = error
    task.lease_expires_at = None
    task.updated_at = now
    if task.cancel_requested_at is not None:
        task.state = TaskState.CANCELED
        task.finished_at = now
    elif retryable and task.attempt < task.max_attempts:
        task.state = TaskState.QUEUED
        # Counted from the last retry that reset the backoff (0: from the first attempt).
        delay = backoff_delay(
            task.attempt - getattr(task, "backoff_from_attempt", 0), job.backoff_base_s, job.backoff_cap_s
        )
        task.not_before = now + timedelta(seconds=delay)
        if not task.pinned:
            task.agent_id = None
    else:
        task.state = terminal_state
        task.finished_at = now
    return task.state


def save_tasks(tasks: Sequence[Any], fields: tuple[str, ...] = MUTABLE_FIELDS) -> None:
    """Write ``fields`` of every given task (a model instance or a row with the same attributes) in one statement."""
    from tasks.engine.history import update_each

    rows = [(task.pk, *(getattr(task, "agent_id" if name == "agent" else name) for name in fields)) for task in tasks]
    update_each(Task, fields, rows)
