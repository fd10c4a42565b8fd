"""The dispatcher's own MQTT connection: assignments leave at the claim's commit, not a process hop later.

Without it an assignment travels commit → NOTIFY → the bridge's publisher →
its transaction → PUBLISH. With it the dispatcher publishes from the commit
hook, collects the PUBACKs and marks the rows sent in one UPDATE per pass. What
is not acknowledged stays unsent, and the bridge publishes it after
``OUTBOX_HANDOFF_GRACE`` (at least once; agents drop duplicates by task id and attempt).
The dispatcher owns its ``DirectPublisher`` and hands ``sink()`` to each claim.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from django.conf import settings

from aegis_site.core import clock, counters
from broker import publisher
from broker.client import BrokerAddress, new_client, service_client_id
from broker.models import OutboxMessage
from broker.outbox import DirectSink

log = logging.getLogger("aegis.dispatcher")


class DirectPublisher:
    def __init__(self, client_id: str | None = None) -> None:
        base = settings.MQTT_CLIENT_ID or service_client_id(socket.gethostname())
        self.client_id = client_id or f"{base}-dispatcher-{os.getpid()}"
        self.address = BrokerAddress.configured()
        self.client = new_client(self.client_id, self.address, persistent=False)
        self.client.max_inflight_messages_set(0)  # no cap: the broker's receive maximum applies
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._lock = threading.Lock()
        self._in_flight: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        self._stopping = False
        self._connected = threading.Event()  # set by paho's network thread, read by the dispatcher's

    def sink(self) -> DirectSink | None:
        """What the dispatcher hands to a claim: ``publish`` while connected; ``None``: the bridge publishes."""
        return self.publish if self._connected.is_set() else None

    def start(self) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._connected.clear()
        self.flush(timeout=2.0)
        self._stopping = True  # the disconnect below is no lost broker
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the dispatcher's publisher: %s", reason)
            return
        self._connected.set()
        log.info("dispatcher publishes assignments itself", extra={"client_id": self.client_id})

    def _on_disconnect(self, client: mqtt.Client, userdata: object, *args: object) -> None:
        self._connected.clear()  # until it is back, the bridge publishes what the dispatcher writes
        if not self._stopping:
            log.warning("dispatcher's publisher lost the broker; the bridge publishes meanwhile")

    def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """The commit hook: publish at QoS 1 now, mark sent in ``flush``."""
        sent = [
            (message.pk, self.client.publish(message.topic, publisher.encode(message.payload), qos=1))
            for message in messages
        ]
        with self._lock:
            self._in_flight.extend(sent)
        for message in messages:
            counters.MQTT_MESSAGES.labels("out", message.message_type).inc()

    def flush(self, timeout: float = 5.0) -> int:
        """Wait for the PUBACKs of what was published and mark those rows sent; returns how many."""
        with self._lock:
            in_flight, self._in_flight = self._in_flight, []
        if not in_flight:
            return 0
        acknowledged = publisher.acknowledged(in_flight, timeout)
        publisher.mark_sent(acknowledged, clock.now())
        if len(acknowledged) < len(in_flight):
            missing = len(in_flight) - len(acknowledged)
            log.warning("%d assignments not acknowledged; the bridge will publish them", missing)
        return len(acknowledged)


def enabled() -> bool:
    return bool(settings.DISPATCHER_PUBLISH and settings.MQTT_URL)
