"""Building and queueing server → agent messages (wire protocol version 1)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from broker.models import OutboxMessage

PROTOCOL_VERSION = 1


def inbox_topic(agent_id: str) -> str:
    return f"aegis/agents/{agent_id}/inbox"


def envelope(message_type: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": uuid.uuid4().hex, "ts": at.isoformat(), "type": message_type, **fields}


def to_inbox(agent_id: str, message_type: str, at: datetime, **fields: Any) -> OutboxMessage:
    return OutboxMessage(
        agent_id=agent_id,
        topic=inbox_topic(agent_id),
        message_type=message_type,
        payload=envelope(message_type, at, **fields),
        created_at=at,
    )


def write(messages: Sequence[OutboxMessage]) -> None:
    if messages:
        OutboxMessage.objects.bulk_create(messages)
