"""Building the control plane's paho clients (bridge and dispatcher) from the ``MQTT_*`` settings."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from aegis_site.core import counters
from registry.pki.crypto import BRIDGE_CN

log = logging.getLogger("aegis.bridge")


def service_client_id(*parts: str) -> str:
    """A client id for the bridge's certificate: the broker's ``aegis_auth`` plugin admits that
    certificate only with ``aegis-bridge`` or ``aegis-bridge-...`` (agents: their own CN only)."""
    return "-".join((BRIDGE_CN, *parts))


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls)

    @classmethod
    def configured(cls) -> BrokerAddress:
        return cls.from_url(settings.MQTT_URL or "mqtt://127.0.0.1:1883")


def mqtt5() -> bool:
    return bool(settings.MQTT_PROTOCOL == "5")


class BatchingClient(mqtt.Client):
    """paho's client, reading and acknowledging in bulk: what lets one bridge take 20,000 messages a second.

    paho 2.2 (pinned in requirements.txt) reads each packet with three or more
    ``recv`` calls (the fixed header byte, each length byte, the body) and,
    with ``manual_ack``, reads one packet per ``select`` wake-up; each PUBACK is
    its own queued packet, wake-up byte and ``send``. Here ``recv`` is served
    from a 64 KiB buffer, every buffered packet is read before ``select`` is
    called again, and ``ack_many`` queues a committed batch's PUBACKs as one
    write. These override private methods; ``tests/test_bridge.py`` runs them
    against a real broker.
    """

    _READ_SIZE = 65536
    _MAX_PACKETS_PER_READ = 10_000  # bounds one read burst; ReceiveMaximum bounds it first in practice

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_pos = 0
        self._read_sock: Any = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_sock is not self._sock:  # a new connection: what was buffered belongs to the old one
            self._read_buffer, self._read_pos, self._read_sock = b"", 0, self._sock
        if self._read_pos >= len(self._read_buffer):
            data = super()._sock_recv(max(bufsize, self._READ_SIZE))  # BlockingIOError when nothing is there
            if len(data) <= bufsize:
                return data  # b"" is the peer closing
            self._read_buffer, self._read_pos = data, 0
        start = self._read_pos
        self._read_pos = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_pos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read until the socket and the buffer are empty (paho reads one packet per wake-up here)."""
        for _ in range(self._MAX_PACKETS_PER_READ):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK QoS 1 messages (``manual_ack``) in one queued write."""
        if mids:
            packet = b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid in mids)
            self._packet_queue(PUBACK, packet, 0, 0)


_PUBACK = struct.Struct("!BBH")

_T = TypeVar("_T")


class InboundQueue(queue.Queue[_T], Generic[_T]):
    """What paho's network thread received, waiting for the consumer: ``maximum`` messages, and QoS 1 past it.

    MQTT 5's ReceiveMaximum bounds the QoS 1 messages the broker sends ahead of
    our PUBACKs, not the QoS 0 ones (heartbeats, by default): a fleet sending
    faster than the bridge applies (its hellos, minutes of them) filled an
    unbounded queue, and the bridge's heap with it. Here a ``put`` of a message
    (an instance of ``bounded``) into a full queue waits up to ``max_wait_s``
    for the consumer to take one, so a burst pushes back on the broker through
    TCP. It waits no longer: paho's network thread is the one that sends the
    PINGREQs and PUBACKs, and the broker drops a client silent for 1.5 x its
    keepalive (a batch of hellos took 100 s on a loaded machine, and the bridge
    lost the broker). Past that wait the queue overflows until the consumer made
    room: a QoS 0 message (a heartbeat: the agent sends the next one) is dropped
    and counted (``aegis_mqtt_dropped_total{reason="inbound_full"}``), any other
    is queued (QoS 1 is bounded by ReceiveMaximum already). Any item that is not
    a message (the consumer's commit marker) is queued at once: the thread that
    puts it must never wait on the network thread, or neither would move. Nothing
    waits once ``until`` is set (the bridge is stopping and nobody may take any
    more), so ``loop_stop`` can join the network thread.
    """

    MAX_WAIT_S = 5.0  # well under the bridge's keepalive (30 s; the broker gives up after 45 s)
    _WAIT_SLICE_S = 0.1  # how soon a waiting put notices ``until``

    def __init__(self, maximum: int, bounded: type | tuple[type, ...], until: threading.Event) -> None:
        if maximum < 1:
            raise ValueError("an inbound queue must hold at least one message")
        super().__init__()  # unbounded as a queue.Queue: only messages count towards ``maximum``
        self.maximum = maximum
        self.bounded = bounded
        self.until = until
        self.max_wait_s = self.MAX_WAIT_S
        self.messages = 0  # messages queued (other items not counted)
        self.overflowing = False  # a put waited ``max_wait_s`` in vain; until the consumer takes one
        self.dropped = 0  # QoS 0 messages dropped while overflowing
        self.waited_s = 0.0  # total time puts waited for room: how long the consumer held the network back
        self._room = threading.Condition(self.mutex)

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if isinstance(item, self.bounded):
                if self.messages >= self.maximum and not self.overflowing:
                    self._wait_for_room(block, timeout)
                if self.messages >= self.maximum and getattr(item, "qos", 1) == 0:
                    self._drop()
                    return
                self.messages += 1
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _wait_for_room(self, block: bool, timeout: float | None) -> None:
        """With ``self.mutex`` held (``_room`` releases it while waiting). A caller's own ``block=False`` or
        ``timeout`` raises ``queue.Full`` as ``queue.Queue`` does; paho's thread (neither) overflows instead."""
        started = time.monotonic()
        deadline = started + (self.max_wait_s if timeout is None else timeout)
        try:
            while self.messages >= self.maximum and not self.until.is_set():
                remaining = deadline - time.monotonic()
                if not block or remaining <= 0:
                    if not block or timeout is not None:
                        raise queue.Full
                    self.overflowing = True
                    log.warning(
                        "the bridge's inbound queue is full: QoS 0 messages are dropped until the consumer catches up",
                        extra={"queued": self.messages, "waited_s": round(time.monotonic() - started, 1)},
                    )
                    return
                self._room.wait(min(remaining, self._WAIT_SLICE_S))
        finally:
            self.waited_s += time.monotonic() - started

    def _drop(self) -> None:
        self.dropped += 1
        counters.MQTT_DROPPED.labels("inbound_full").inc()

    def _get(self) -> _T:
        item = self.queue.popleft()
        if isinstance(item, self.bounded):
            self.messages -= 1
            self.overflowing = self.overflowing and self.messages >= self.maximum
            self._room.notify()
        return item


def new_client(client_id: str, address: BrokerAddress, persistent: bool, manual_ack: bool = False) -> BatchingClient:
    """A paho client with the bridge's TLS identity, TCP_NODELAY and reconnect backoff.

    ``persistent``: on MQTT 3.1.1 the session is kept (``clean_session=False``);
    on MQTT 5 the caller passes ``clean_start`` and the session expiry at connect.
    """
    client = BatchingClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if mqtt5() else mqtt.MQTTv311,
        clean_session=None if mqtt5() else not persistent,
        manual_ack=manual_ack,
    )
    if address.tls:
        client.tls_set(
            ca_certs=settings.MQTT_CA_FILE or None,
            certfile=settings.MQTT_CERT_FILE or None,
            keyfile=settings.MQTT_KEY_FILE or None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.on_socket_open = set_nodelay
    return client


def set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Without TCP_NODELAY an idle QoS 1 round trip waits ~40 ms for the delayed ACK (see DESIGN.md)."""
    with contextlib.suppress(OSError, AttributeError):  # TLS wrappers pass through; others have no Nagle
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
