"""The Channels consumer routed as ``"mqtt"`` in ``aegis_site/asgi.py``: apply a batch, then acknowledge it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from channels.consumer import SyncConsumer
from django.db import close_old_connections

from aegis_site.core.roles import FailedSteps
from broker.ingest import Decoded, Incoming, decode, ingest
from broker.presence import HeartbeatBuffer

log = logging.getLogger("aegis.bridge")


class MqttConsumer(SyncConsumer):
    """One instance per bridge connection. The scope carries the bridge's heartbeat buffer and stop event.

    ``mqtt.message`` holds a batch (``Incoming`` messages, or the bridge's already ``Decoded``
    ones); after its transaction committed the consumer sends ``mqtt.ack`` with the packet
    ids, and only then does the bridge send the PUBACKs. While the database is away, or on
    any other error, it retries the batch with backoff and acknowledges nothing, so the
    broker keeps every message; after ``ROLE_MAX_FAILED_STEPS`` failures in a row it calls
    the scope's ``on_failed`` (the bridge exits non-zero).
    """

    def mqtt_message(self, event: dict[str, Any]) -> None:
        messages: Decoded | list[Incoming] = event["messages"]
        batch = messages if isinstance(messages, Decoded) else decode(messages)
        heartbeats: HeartbeatBuffer = self.scope["heartbeats"]
        stop: threading.Event = self.scope["stop"]
        failures: FailedSteps = self.scope.get("failures") or FailedSteps("bridge batch", "aegis.bridge")
        while True:
            try:
                ingest(batch, heartbeats, self.scope.get("revoked", frozenset()))
                failures.succeeded()
                break
            except Exception:
                # Nothing is acknowledged that was not applied: the broker keeps the batch.
                delay = failures.failed()
                close_old_connections()
                if failures.exhausted:
                    self.scope.get("on_failed", stop.set)(f"{len(batch)} messages could not be applied")
                    return
                if stop.wait(delay):
                    return  # shutting down: leave them unacknowledged, the broker redelivers
        self.send({"type": "mqtt.ack", "acks": [(item.mid, item.qos) for item in batch.items]})
