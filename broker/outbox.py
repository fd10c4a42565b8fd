"""Building and queueing server → agent messages (wire protocol version 1).

Every message is written in the transaction of the state change that caused it.
Who publishes it after the commit: the bridge, woken by NOTIFY; or, when the
writer hands in its own publisher (a ``DirectSink``: the dispatcher's MQTT
connection, ``broker.direct``), that publisher at once from the commit hook, with
the bridge as the fallback after ``OUTBOX_HANDOFF_GRACE`` for whatever it did not
get acknowledged. The sink is an argument, never process state: only the
dispatcher's own claims and lease expiries pass one.
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


def to_inbox(agent_id: str, message_type: str, at: datetime, **fields: Any) -> OutboxMessage:
    return OutboxMessage(
        agent_id=agent_id,
        topic=inbox_topic(agent_id),
        message_type=message_type,
        payload=envelope(message_type, at, **fields),
        created_at=at,
    )


def write(messages: Sequence[OutboxMessage], sink: DirectSink | None = None) -> None:
    """Queue messages in the current transaction; they are published once it commits (by ``sink``, if given)."""
    if not messages:
        return
    for message in messages:
        message.direct = sink is not None
    OutboxMessage.objects.bulk_create(messages)
    after_write(messages, sink)


def after_write(messages: Sequence[OutboxMessage], sink: DirectSink | None = None) -> None:
    """Arrange publication of rows just written: ``sink`` at commit, or a NOTIFY for the bridge."""
    if sink is None or not all(message.direct for message in messages):
        wakeup.notify_on_commit(wakeup.OUTBOX_CHANNEL)
    else:
        transaction.on_commit(lambda: sink(messages))
