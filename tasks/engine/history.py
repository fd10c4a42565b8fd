"""Rows of the task history, written a batch per statement (``aegis_site.core.bulk``).

The queue's hot path writes a batch of rows per transaction in one statement;
``insert_rows`` and ``update_each`` are re-exported here for the engine's modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aegis_site.core.bulk import insert_rows, update_each
from tasks.models import TaskEvent

__all__ = ["EVENT_FIELDS", "event", "insert_rows", "update_each", "write_events"]

EVENT_FIELDS = ("task", "kind", "attempt", "from_state", "to_state", "agent_id", "message_id", "data", "created_at")


def event(
    task_id: int,
    kind: str,
    attempt: int,
    at: datetime,
    from_state: str = "",
    to_state: str = "",
    agent_id: str | None = "",
    message_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """One history row, in ``EVENT_FIELDS`` order."""
    return (task_id, kind, attempt, from_state, to_state, agent_id or "", message_id, data, at)


def write_events(events: Sequence[tuple[Any, ...]]) -> None:
    insert_rows(TaskEvent, EVENT_FIELDS, events)
