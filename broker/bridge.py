"""The bridge role: MQTT in (agent messages → the ``mqtt`` Channels consumer) and out (the outbox → inboxes).

Threads, each with one job:
- paho's network loop: receives messages into ``inbound``; reconnects with
  backoff forever and subscribes again on every connect;
- the consumer pump: an asyncio loop running the ASGI application for an
  ``mqtt`` scope; it hands batches to the consumer and sends the PUBACKs the
  consumer releases after its commit (``manual_ack``); it decodes the next
  batch (in an executor thread) while the consumer applies the previous one;
- the publisher: publishes unsent outbox rows, woken by NOTIFY or a poll;
- the heartbeat flusher: one UPDATE per flush window.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aegis_site.core.roles import FailedSteps, RoleBeacon
from aegis_site.core.wakeup import OUTBOX_CHANNEL, Listener
from broker import protocol
from broker.client import BatchingClient, BrokerAddress, InboundQueue, mqtt5, new_client, service_client_id
from broker.ingest import Decoded, Incoming
from broker.presence import HeartbeatBuffer, RevokedAgents
from broker.publisher import publish_pending

log = logging.getLogger("aegis.bridge")

LINGER_AFTER = frozenset({"accepted", "progress"})  # task events an agent follows with another one
SUBSCRIBED_CHANNELS = (protocol.HELLO, protocol.HEARTBEAT, protocol.STATUS, protocol.EVENTS, protocol.LOGS)


def subscriptions(mqtt5: bool, group: str) -> list[tuple[str, int]]:
    """Shared subscriptions on MQTT 5 so replicas split the load; plain ones on 3.1.1 (one bridge only)."""
    filters = [protocol.topic_filter(channel) for channel in SUBSCRIBED_CHANNELS]
    if mqtt5:
        filters = [f"$share/{group}/{topic}" for topic in filters]
    return [(topic, 1) for topic in filters]


@dataclass(frozen=True, slots=True)
class _Applied:
    """Put into ``inbound`` when the consumer committed batch number ``batch``."""

    batch: int


class Bridge:
    def __init__(self, url: str | None = None, client_id: str | None = None) -> None:
        self.address = BrokerAddress.from_url(url) if url else BrokerAddress.configured()
        self.client_id = client_id or settings.MQTT_CLIENT_ID or service_client_id(socket.gethostname())
        self.mqtt5 = mqtt5()
        self.stop = threading.Event()
        self.connected = threading.Event()
        # Bounded: QoS 0 heartbeats are not limited by ReceiveMaximum; when it is full a QoS 0 message is dropped
        # and counted, never waited for (paho's thread also sends the pings and the PUBACKs; docs/benchmarks.md
        # "Memory per connected agent"). QoS 1 messages and the commit markers always go in.
        self.inbound: InboundQueue[Incoming | _Applied] = InboundQueue(
            settings.MQTT_RECEIVE_MAXIMUM + settings.BRIDGE_BATCH_SIZE, Incoming, self.stop
        )
        self.heartbeats = HeartbeatBuffer()
        self.revoked = RevokedAgents()
        self.unsubscribed = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the subscriptions of the current session
        self._unacknowledged = 0  # received, not acknowledged (some dropped: inbound.dropped); a clean stop waits
        self._count_lock = threading.Lock()
        self.exit_code = 0  # 1 once a thread gave up (``fail``): the process exits for its supervisor to restart it
        self.batches = FailedSteps("bridge batch", "aegis.bridge")
        self.publishing = FailedSteps("outbox publishing", "aegis.bridge")
        self.flushing = FailedSteps("heartbeat flush", "aegis.bridge")
        self.client = self._client()
        self._threads: list[threading.Thread] = []

    # --- MQTT ------------------------------------------------------------------------------

    def _client(self) -> BatchingClient:
        client = new_client(self.client_id, self.address, persistent=True, manual_ack=True)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = lambda *args: self.unsubscribed.set()
        client.on_subscribe = lambda *args: self.subscribed.set()
        return client

    def _connect_properties(self) -> Properties | None:
        if not self.mqtt5:
            return None
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.MQTT_SESSION_EXPIRY  # keep unacknowledged messages for us
        properties.ReceiveMaximum = min(settings.MQTT_RECEIVE_MAXIMUM, 65535)  # bounds what waits in memory
        return properties

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the bridge: %s", reason)
            return
        client.subscribe(subscriptions(self.mqtt5, settings.MQTT_SHARE_GROUP))
        self.connected.set()
        log.info("bridge connected", extra={"client_id": self.client_id, "session_present": flags.session_present})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self.stop.is_set():
            log.warning("bridge lost the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._count_lock:
            self._unacknowledged += 1
        self.inbound.put(Incoming(message.topic, message.payload, message.mid, message.qos))

    def ack(self, acks: list[tuple[int, int]]) -> None:
        """PUBACK a committed batch: ``(packet id, qos)`` pairs."""
        with self._count_lock:
            self._unacknowledged -= len(acks)
        self.client.ack_many([mid for mid, qos in acks if qos == 1])

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    # --- threads ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.mqtt5:
            self.client.connect_async(
                self.address.host,
                self.address.port,
                keepalive=30,
                clean_start=False,
                properties=self._connect_properties(),
            )
        else:  # MQTT 3.1.1: the persistent session comes from clean_session=False in the constructor
            self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        for name, target in (
            ("consumer", self._run_consumer),
            ("publisher", self._run_publisher),
            ("heartbeats", self._run_heartbeat_flush),
        ):
            thread = threading.Thread(target=target, name=f"bridge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop cleanly: leave the share group, apply and acknowledge what already arrived, end the session.

        A member that merely disconnected would stay in the share group with its
        persistent session, and the broker would keep queuing its turn of the
        agents' messages for a client that is not coming back. (A killed bridge
        skips all this: its session keeps the unacknowledged messages for a
        successor with the same client id.)
        """
        if self.connected.is_set():
            self.client.unsubscribe([topic for topic, _qos in subscriptions(self.mqtt5, settings.MQTT_SHARE_GROUP)])
            self.unsubscribed.wait(min(timeout, 5.0))
            deadline = time.monotonic() + timeout
            while self._unacknowledged - self.inbound.dropped > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.mqtt5:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
            self.client.disconnect(properties=properties)
        else:
            self.client.disconnect()
        self.client.loop_stop()
        log.info("bridge stopped")

    def fail(self, reason: str) -> None:
        """A thread gave up after ``ROLE_MAX_FAILED_STEPS`` failures in a row: stop, and exit non-zero."""
        log.critical("bridge giving up: %s", reason)
        self.exit_code = 1
        self.stop.set()

    def healthy(self) -> bool:
        """Connected, and no thread in a run of failures: only then does the bridge write its role heartbeat."""
        return self.connected.is_set() and not (self.batches.count or self.publishing.count or self.flushing.count)

    def abandon(self) -> None:
        """Leave like a crash: keep the session, so what was not acknowledged waits for the restarted bridge."""
        self.stop.set()
        for thread in self._threads:
            thread.join(5.0)
        self.client.disconnect()
        self.client.loop_stop()
        log.info("bridge stopped without acknowledging what it could not apply")

    def run(self) -> int:
        """Until SIGTERM (a clean stop, 0) or until a thread gave up (1)."""
        self.start()
        self.stop.wait()
        if self.exit_code:
            self.abandon()
        else:
            self.shutdown()
        return self.exit_code

    def _gather(self, in_flight: int | None, consumer_gone: Callable[[], bool]) -> Decoded:
        """The next batch, decoded as its messages arrive.

        With a batch ``in_flight`` (being applied), take messages until the batch is full or that
        batch committed (its ``_Applied`` marker comes through ``inbound``): the next batch is
        decoded while the previous one waits on PostgreSQL, which releases the GIL. With none,
        take what is there now, waiting up to 0.2 s for the first message; and while the batch
        ends with an event that announces another (``task.accepted``, ``task.progress``), wait
        up to ``BRIDGE_LINGER_MS`` for it: a short task's acceptance and result then commit in one
        transaction instead of two in a row. A result is never held back.
        """
        batch = Decoded()
        lingering = False  # the batch ends with an event that announces another
        deadline = 0.0  # the most a batch waits for one: set at its first announcing event
        while len(batch) < settings.BRIDGE_BATCH_SIZE and not self.stop.is_set():
            try:
                if not batch or in_flight is not None:
                    item = self.inbound.get(timeout=0.2)
                elif lingering:
                    item = self.inbound.get(timeout=max(deadline - time.monotonic(), 0.0))
                else:
                    item = self.inbound.get_nowait()
            except queue.Empty:
                if in_flight is None or consumer_gone():  # a dead consumer applies nothing: let the pump see it
                    break
                continue
            if isinstance(item, _Applied):
                if item.batch == in_flight:
                    in_flight = None  # an earlier batch's marker (this one filled up first) is ignored
                continue
            batch.add(item)
            last = batch.messages[-1]
            lingering = isinstance(last, protocol.TaskEvent) and last.kind in LINGER_AFTER
            if lingering and not deadline:
                deadline = time.monotonic() + settings.BRIDGE_LINGER_MS / 1000
        return batch

    def _run_consumer(self) -> None:
        try:
            asyncio.run(self._pump())
        except Exception:
            log.exception("the bridge's consumer died")
            self.fail("the consumer died")

    async def _pump(self) -> None:
        from channels.routing import get_default_application

        application = get_default_application()
        mailbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        done: asyncio.Queue[None] = asyncio.Queue()

        number = 0  # batches handed to the consumer
        in_flight: int | None = None  # the one it holds

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "mqtt.ack":
                self.ack(message["acks"])
                self.inbound.put(_Applied(number))  # wakes ``_gather``: hand over what it has
                await done.put(None)

        scope = {
            "type": "mqtt",
            "heartbeats": self.heartbeats,
            "stop": self.stop,
            "revoked": self.revoked,
            "failures": self.batches,
            "on_failed": self.fail,
        }
        instance = asyncio.ensure_future(application(scope, mailbox.get, send))
        loop = asyncio.get_running_loop()
        try:
            while not self.stop.is_set():
                batch = await loop.run_in_executor(None, self._gather, in_flight, instance.done)
                if in_flight is not None:  # one batch applied at a time: the next waits for this one's commit
                    await self._committed(done, instance)
                    in_flight = None
                if not batch:
                    continue
                number += 1
                in_flight = number
                # In process, so the batch travels as it is (a channel layer would need plain data).
                await mailbox.put({"type": "mqtt.message", "messages": batch})
        finally:
            instance.cancel()

    async def _committed(self, done: asyncio.Queue[None], instance: asyncio.Future[Any]) -> None:
        """Until the consumer acknowledged the batch it holds, or the bridge stops."""
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(done.get(), timeout=0.5)
                return
            except TimeoutError:
                if instance.done():
                    instance.result()  # re-raises what killed the consumer

    def _run_publisher(self) -> None:
        listener = Listener(OUTBOX_CHANNEL)
        try:
            while not self.stop.is_set():
                close_old_connections()
                published = 0
                if self.connected.is_set():
                    try:
                        published = publish_pending(self.publish)
                        self.publishing.succeeded()
                    except Exception:
                        delay = self.publishing.failed()
                        close_old_connections()
                        if self.publishing.exhausted:
                            self.fail("outbox publishing keeps failing")
                            return
                        self.stop.wait(delay)
                        continue
                if not published:
                    listener.wait(settings.BRIDGE_OUTBOX_POLL_INTERVAL, self.stop)
        finally:
            listener.close()
            close_old_connections()

    def _run_heartbeat_flush(self) -> None:
        beacon = RoleBeacon("bridge")
        wait = settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL
        while not self.stop.wait(wait):
            wait = max(self._flush_heartbeats(), settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL)
            if self.flushing.exhausted:
                self.fail("the heartbeat flush keeps failing")
                return
            if self.healthy():  # cut off from the broker, or failing: no heartbeat, health says so
                beacon.maybe_beat(client_id=self.client_id)
            self.revoked.maybe_refresh()
        self._flush_heartbeats()

    def _flush_heartbeats(self) -> float:
        """Write the buffered heartbeat times; returns the backoff after a failure (0 after a success)."""
        try:
            close_old_connections()
            self.heartbeats.flush()
            self.flushing.succeeded()
            return 0.0
        except Exception:
            close_old_connections()
            return self.flushing.failed()  # the times are kept for the next window
