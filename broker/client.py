"""Building the control plane's paho clients (bridge and dispatcher) from the ``MQTT_*`` settings."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
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
    """What paho's network thread received, waiting for the consumer: ``maximum`` QoS 0 messages at most.

    MQTT 5's ReceiveMaximum bounds the QoS 1 messages the broker sends ahead of
    our PUBACKs, not the QoS 0 ones (heartbeats, by default): a fleet sending
    faster than the bridge applies (its hellos, minutes of them) filled an
    unbounded queue, and the bridge's heap with it. Here a QoS 0 message that
    finds ``maximum`` messages (instances of ``bounded``) queued is dropped and
    counted (``aegis_mqtt_dropped_total{reason="inbound_full"}``): a heartbeat,
    whose agent sends the next one. Nothing waits: paho's network thread is the
    one that sends the PINGREQs and PUBACKs, and a put that waited for room
    (tried first) kept it inside one read of thousands of packets long enough
    for the broker to drop the silent bridge (1.5 x its keepalive). QoS 1 messages
    are always queued: ReceiveMaximum bounds them. Items that are not messages
    (the consumer's commit marker) are always queued. Once ``until`` is set (the
    bridge is stopping, nobody will apply anything more) every QoS 0 message is
    dropped.
    """

    def __init__(self, maximum: int, bounded: type | tuple[type, ...], until: threading.Event) -> None:
        if maximum < 1:
            raise ValueError("an inbound queue must hold at least one message")
        super().__init__()  # unbounded as a queue.Queue: only QoS 0 messages are refused past ``maximum``
        self.maximum = maximum
        self.bounded = bounded
        self.until = until
        self.messages = 0  # messages queued (other items not counted)
        self.peak = 0  # the most messages queued at once
        self.dropped = 0  # QoS 0 messages dropped

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if isinstance(item, self.bounded):
                if getattr(item, "qos", 1) == 0 and (self.messages >= self.maximum or self.until.is_set()):
                    self._drop()
                    return
                self.messages += 1
                self.peak = max(self.peak, self.messages)
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _drop(self) -> None:
        if not self.dropped % 10_000:  # the first, then one in 10,000: a storm is one line a while, not one each
            log.warning("the bridge's inbound queue is full: QoS 0 messages dropped", extra={"dropped": self.dropped})
        self.dropped += 1
        counters.MQTT_DROPPED.labels("inbound_full").inc()

    def _get(self) -> _T:
        item = self.queue.popleft()
        if isinstance(item, self.bounded):
            self.messages -= 1
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
