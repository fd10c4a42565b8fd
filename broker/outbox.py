"""Building and queueing server → agent messages (wire protocol version 1).

Every message is written in the transaction of the state change that caused it.
Who publishes it after the commit: the bridge, woken by NOTIFY; or, when the
writing process has its own MQTT connection (the dispatcher), that process at
once from its commit hook, with the bridge as the fallback after
``OUTBOX_HANDOFF_GRACE`` for whatever it did not get acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction

from aegis_site.core import wakeup
from broker.models import OutboxMessage
from broker.protocol import envelope, inbox_topic

DirectSink = Callable[[Sequence[OutboxMessage]], None]
_direct_sink: DirectSink | None = None


def to_inbox(agent_id: str, message_type: str, at: datetime, **fields: Any) -> OutboxMessage:
    return OutboxMessage(
        agent_id=agent_id,
        topic=inbox_topic(agent_id),
        message_type=message_type,
        payload=envelope(message_type, at, **fields),
        created_at=at,
    )


def set_direct_sink(sink: DirectSink | None) -> None:
    """Install (or remove) this process's publisher for the messages it writes; ``None``: the bridge's job."""
    global _direct_sink
    _direct_sink = sink


def direct_sink() -> DirectSink | None:
    return _direct_sink


def write(messages: Sequence[OutboxMessage]) -> None:
    """Queue messages in the current transaction; they are published once it commits."""
    if not messages:
        return
    for message in messages:
        message.direct = _direct_sink is not None
    OutboxMessage.objects.bulk_create(messages)
    after_write(messages)


def after_write(messages: Sequence[OutboxMessage]) -> None:
    """Arrange publication of rows just written: this process's sink at commit, or a NOTIFY for the bridge."""
    sink = _direct_sink
    if sink is None or not all(message.direct for message in messages):
        wakeup.notify_on_commit(wakeup.OUTBOX_CHANNEL)
    else:
        transaction.on_commit(lambda: sink(messages))
