"""Rows of the task history and the set-based writes the engine's batches share."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, models

from tasks.models import TaskEvent


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
) -> TaskEvent:
    return TaskEvent(
        task_id=task_id,
        kind=kind,
        attempt=attempt,
        from_state=from_state,
        to_state=to_state,
        agent_id=agent_id or "",
        message_id=message_id,
        data=data,
        created_at=at,
    )


def write_events(events: Sequence[TaskEvent]) -> None:
    if events:
        TaskEvent.objects.bulk_create(events)


def update_each(model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """``UPDATE table SET f1=%s, ... WHERE id=%s`` once per row, sent as one pipelined executemany.

    Each row is ``(pk, value1, value2, ...)``. Values go through each field's own
    database preparation, so datetimes and JSON are stored exactly as the ORM would.
    """
    if not rows:
        return
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in columns)  # type: ignore[union-attr]
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"  # type: ignore[union-attr]
    params = [
        [field.get_db_prep_value(value, connection) for field, value in zip(columns, values, strict=True)] + [pk]  # type: ignore[union-attr]
        for pk, *values in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
