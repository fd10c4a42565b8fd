"""A message over the protocol's 256 KiB limit is dropped and counted by the bridge, as docs/protocol.md says.

Mosquitto started from the generated configuration, the bridge with its certificate, a plain paho client
with an agent's certificate (paho re-sends an unacknowledged QoS 1 message after every reconnect: when the
broker's own limit equalled the protocol's, the broker disconnected such a client, which reconnected and
re-sent it 40 times in 40 s).
"""

from __future__ import annotations

import json
import uuid

import pytest

from broker import mosquitto
from tests.support import mqtt_dropped, wait_for
from tests.test_broker_security import Broker, Probe, broker  # noqa: F401  (the module-scoped Mosquitto fixture)
from tests.test_e2e_tls import tls_bridge  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def event(size: int) -> bytes:
    body = {"v": 1, "id": str(uuid.uuid4()), "ts": "2026-12-07T00:00:00Z", "type": "task.succeeded"}
    body.update(task_id=1, attempt=1, result="x" * size)
    return json.dumps(body).encode()


def test_a_message_over_the_protocol_limit_is_acknowledged_dropped_and_counted(broker, tls_bridge):  # noqa: F811
    connects: list[int] = []
    client = Probe("agent-a")
    on_connect = client.client.on_connect

    def count(*args: object) -> None:
        connects.append(1)
        on_connect(*args)  # type: ignore[misc]

    client.client.on_connect = count
    before = mqtt_dropped()
    try:
        assert client.start(broker, broker.agents["agent-a"])
        oversized = event(300 * 1024)
        assert len(oversized) > mosquitto.MAX_PAYLOAD_BYTES
        assert client.publish("aegis/agents/agent-a/events", oversized).value == 0  # PUBACK: never re-sent
        wait_for(lambda: (mqtt_dropped() - before)["oversized"] >= 1, what="the bridge counted the oversized drop")
        # Still connected and usable: the next message goes through too.
        assert client.publish("aegis/agents/agent-a/events", b"not json").value == 0
        wait_for(lambda: (mqtt_dropped() - before)["not_json"] >= 1, what="the next message reached the bridge")
        assert not client.closed.is_set()
        assert len(connects) == 1
        assert (mqtt_dropped() - before)["oversized"] == 1
    finally:
        client.stop()


def test_past_the_brokers_own_limit_the_broker_disconnects(broker, tls_bridge):  # noqa: F811
    client = Probe("agent-a")
    client.client.reconnect_delay_set(60, 60)  # one attempt is enough to see the disconnect
    try:
        assert client.start(broker, broker.agents["agent-a"])
        limit = mosquitto.MAX_PAYLOAD_BYTES * mosquitto.BROKER_PAYLOAD_FACTOR
        client.client.publish("aegis/agents/agent-a/events", event(limit + mosquitto.PACKET_OVERHEAD_BYTES), qos=1)
        wait_for(client.closed.is_set, what="the broker to disconnect the client")
    finally:
        client.stop()
