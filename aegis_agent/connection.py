"""Building paho clients the way every Aegis agent connects (real or simulated).

One MQTT session per agent: client id = agent id, a persistent session
(MQTT 5: clean_start False + session expiry; 3.1.1: clean_session False), a
retained ``offline`` status as Last Will (QoS 1), and TCP_NODELAY on the socket:
without it an idle QoS 1 round trip waits on Nagle + delayed ACK (~88 ms vs ~0.3 ms).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aegis_agent import wire
from aegis_agent.redelivery import redelivery


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        context.load_cert_chain(self.cert, self.key)
        context.check_hostname = self.check_hostname
        return context


def set_nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """paho's on_socket_open: runs for every (re)connect, before CONNECT is sent."""
    # Unix sockets and websocket wrappers have no Nagle to switch off.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def offline_will(client: mqtt.Client, topics: wire.Topics) -> None:
    """Set the Last Will: a retained ``offline`` status, fresh id per connection."""
    client.will_set(topics.status, wire.encode(wire.status("offline")), qos=1, retain=True)


def new_client(
    agent_id: str,
    mqtt_version: int = 5,
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> mqtt.Client:
    if mqtt_version == 5:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id, clean_session=False, protocol=mqtt.MQTTv311
        )
    # An exception in our callbacks must never kill the network loop.
    client.suppress_exceptions = True
    client.on_socket_open = set_nodelay
    client.on_publish = lambda c, _u, mid, reason, _p: redelivery.on_publish(c, mid, reason)
    if tls_context is not None:
        client.tls_set_context(tls_context)
    elif tls is not None:
        client.tls_set_context(tls.context())
    if username is not None:
        client.username_pw_set(username, password)
    topics = wire.Topics(agent_id)
    offline_will(client, topics)
    return client


def connect_properties(mqtt_version: int, session_expiry_s: int) -> Properties | None:
    if mqtt_version != 5:
        return None
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry_s
    return properties


def clean_start_flag(mqtt_version: int) -> mqtt.CleanStartOption:
    # For MQTT 3.1.1 paho refuses anything but its default here (clean_session is set on the Client).
    return False if mqtt_version == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY


def describe_payload(data: bytes) -> str:
    """A short, log-safe rendering of a payload we refused."""
    text = data[:200].decode(errors="replace")
    return json.dumps(text) + ("..." if len(data) > 200 else "")
