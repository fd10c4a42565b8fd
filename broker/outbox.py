"""Building and queueing server → agent messages (wire protocol version 1)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from broker.models import OutboxMessage
from broker.protocol import envelope, inbox_topic
from tasks.engine import wakeup


def to_inbox(agent_id: str, message_type: str, at: datetime, **fields: Any) -> OutboxMessage:
    return OutboxMessage(
        agent_id=agent_id,
        topic=inbox_topic(agent_id),
        message_type=message_type,
        payload=envelope(message_type, at, **fields),
        created_at=at,
    )


def write(messages: Sequence[OutboxMessage]) -> None:
    """Queue messages in the current transaction; the bridge is woken once it commits."""
    if messages:
        OutboxMessage.objects.bulk_create(messages)
        wakeup.notify_on_commit(wakeup.OUTBOX_CHANNEL)
