"""Building the control plane's paho clients (bridge and dispatcher) from the ``MQTT_*`` settings."""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion


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


def new_client(client_id: str, address: BrokerAddress, persistent: bool, manual_ack: bool = False) -> mqtt.Client:
    """A paho client with the bridge's TLS identity, TCP_NODELAY and reconnect backoff.

    ``persistent``: on MQTT 3.1.1 the session is kept (``clean_session=False``);
    on MQTT 5 the caller passes ``clean_start`` and the session expiry at connect.
    """
    client = mqtt.Client(
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
