"""The Channels consumer routed as ``"mqtt"`` in ``aegis_site/asgi.py``: apply a batch, then acknowledge it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from channels.consumer import SyncConsumer
from django.db import InterfaceError, OperationalError, close_old_connections

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
        reconnected = False
        while True:
            try:
                ingest(batch, heartbeats, self.scope.get("revoked", frozenset()))
                failures.succeeded()
                break
            except Exception as error:
                # Nothing is acknowledged that was not applied: the broker keeps the batch.
                close_old_connections()
                if not reconnected and _connection_lost(error):
                    # The connection died under the batch (a restart, pg_terminate_backend): at once, once,
                    # on a fresh one from the pool. The whole batch again: duplicates are recognised.
                    reconnected = True
                    log.info("database connection lost during a batch; applying the batch on a new one")
                    continue
                delay = failures.failed()
                if failures.exhausted:
                    self.scope.get("on_failed", stop.set)(f"{len(batch)} messages could not be applied")
                    return
                if stop.wait(delay):
                    return  # shutting down: leave them unacknowledged, the broker redelivers
        self.send({"type": "mqtt.ack", "acks": [(item.mid, item.qos) for item in batch.items]})


def _connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says the database connection died (a restart, ``pg_terminate_backend``), not a statement."""
    cause = error.__cause__ if isinstance(error, (OperationalError, InterfaceError)) else None
    if isinstance(cause, psycopg.InterfaceError):  # used after it closed
        return True
    if isinstance(cause, psycopg.OperationalError):
        sqlstate = cause.sqlstate  # none: the socket failed; 08: connection exception; 57P: the server shut it
        return sqlstate is None or sqlstate.startswith(("08", "57P"))
    return False
