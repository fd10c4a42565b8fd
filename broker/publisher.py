"""Publishing the outbox: server → agent messages leave only after the transaction that wrote them committed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from aegis_site.core import clock, counters
from broker.models import OutboxMessage

log = logging.getLogger("aegis.bridge")


class Delivery(Protocol):
    """What publishing one message returns: something to wait on for the broker's PUBACK."""

    def wait_for_publish(self, timeout: float | None = None) -> None: ...

    def is_published(self) -> bool: ...


Publish = Callable[[str, bytes], Delivery]


def publish_pending(publish: Publish, limit: int = 500, puback_timeout: float = 5.0) -> int:
    """Publish up to ``limit`` unsent messages at QoS 1 and mark those the broker acknowledged as sent.

    Rows the dispatcher publishes itself are left to it for ``OUTBOX_HANDOFF_GRACE``
    seconds. The rows stay locked (``SKIP LOCKED`` for other bridges) until the PUBACKs are
    in, so a crash before the commit leaves them unsent and they go out again on
    restart: at least once, and agents drop a duplicate by task id and attempt.
    Returns how many messages were marked sent.
    """
    with transaction.atomic():
        handed_off = Q(direct=True, created_at__gte=clock.now() - timedelta(seconds=settings.OUTBOX_HANDOFF_GRACE))
        pending = list(
            OutboxMessage.objects.filter(sent_at__isnull=True)
            .exclude(handed_off)
            .select_for_update(skip_locked=True)
            .order_by("id")[:limit]
        )
        if not pending:
            return 0
        deliveries = [(message.pk, publish(message.topic, encode(message.payload))) for message in pending]
        for message in pending:
            counters.MQTT_MESSAGES.labels("out", message.message_type).inc()
        sent = acknowledged(deliveries, puback_timeout)
        mark_sent(sent, clock.now())
    if len(sent) < len(pending):
        log.warning("outbox: %d of %d messages not acknowledged; retrying", len(pending) - len(sent), len(pending))
    return len(sent)


def encode(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def acknowledged(deliveries: Sequence[tuple[int, Delivery]], timeout: float) -> list[int]:
    """The row ids whose PUBACK arrived within ``timeout`` (counted from the first wait)."""
    sent = []
    deadline = time.monotonic() + timeout
    for pk, delivery in deliveries:
        try:
            delivery.wait_for_publish(max(deadline - time.monotonic(), 0.001))
        except (RuntimeError, ValueError):  # paho: not connected / queue full
            continue
        if delivery.is_published():
            sent.append(pk)
    return sent


def mark_sent(ids: list[int], at: datetime) -> None:
    if ids:
        OutboxMessage.objects.filter(pk__in_array=ids).update(sent_at=at)


def backlog() -> int:
    return OutboxMessage.objects.filter(sent_at__isnull=True).count()
