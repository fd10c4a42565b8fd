"""The Channels consumer routed as ``"mqtt"`` in ``aegis_site/asgi.py``: apply a batch, then acknowledge it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from channels.consumer import SyncConsumer
from django.db import DatabaseError, close_old_connections

from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer

log = logging.getLogger("aegis.bridge")


class MqttConsumer(SyncConsumer):
    """One instance per bridge connection. The scope carries the bridge's heartbeat buffer and stop event.

    ``mqtt.message`` holds a batch; after its transaction committed the consumer
    sends ``mqtt.ack`` with the packet ids, and only then does the bridge send the
    PUBACKs. While the database is away it retries the batch with backoff and
    acknowledges nothing, so the broker keeps every message.
    """

    def mqtt_message(self, event: dict[str, Any]) -> None:
        batch: list[Incoming] = event["messages"]
        heartbeats: HeartbeatBuffer = self.scope["heartbeats"]
        stop: threading.Event = self.scope["stop"]
        delay = 0.05
        while True:
            try:
                ingest(batch, heartbeats, self.scope.get("revoked", frozenset()))
                break
            except DatabaseError:
                log.warning("database error while ingesting %d messages; retrying in %.2fs", len(batch), delay)
                close_old_connections()
                if stop.wait(delay):
                    return  # shutting down: leave them unacknowledged, the broker redelivers
                delay = min(delay * 2, 5.0)
        self.send({"type": "mqtt.ack", "acks": [(item.mid, item.qos) for item in batch]})
