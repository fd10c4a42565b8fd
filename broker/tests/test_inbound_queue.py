"""The bridge's ``inbound`` queue holds at most so many messages (``broker.client.InboundQueue``).

QoS 0 heartbeats are not bounded by MQTT 5's ReceiveMaximum, so a fleet that sends
faster than the bridge applies grew an unbounded queue. A full queue drops QoS 0 and
never makes paho's network thread wait (it sends the PINGREQs and PUBACKs); the
consumer's commit marker always goes in (the thread that puts it is the one that frees
room), and QoS 1 always goes in (ReceiveMaximum bounds it).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.bridge import Bridge, _Applied
from broker.client import InboundQueue
from broker.ingest import Incoming
from registry.models import Agent
from tests.support import broker_reachable, envelope, wait_for

pytestmark = pytest.mark.timeout(120)


def message(mid: int, qos: int = 1) -> Incoming:
    return Incoming("aegis/agents/a1/heartbeat", b"{}", mid, qos)


def test_a_qos_0_message_beyond_the_maximum_is_dropped_and_qos_1_is_queued() -> None:
    inbound: InboundQueue[Any] = InboundQueue(2, Incoming, threading.Event())
    inbound.put(message(1, qos=0))
    inbound.put(message(2))
    inbound.put(message(3, qos=0))  # full: dropped, and paho's thread goes on at once
    inbound.put(message(4))  # QoS 1: ReceiveMaximum bounds those, never dropped
    assert (inbound.dropped, inbound.messages, inbound.peak) == (1, 3, 3)
    assert [inbound.get().mid for _ in range(3)] == [1, 2, 4]
    inbound.put(message(5, qos=0))  # room again
    assert inbound.get().mid == 5
    assert (inbound.dropped, inbound.messages) == (1, 0)


def test_the_commit_marker_goes_in_when_the_queue_is_full_and_keeps_its_place() -> None:
    inbound: InboundQueue[Any] = InboundQueue(1, Incoming, threading.Event())
    inbound.put(message(1))
    inbound.put(_Applied(7))
    assert inbound.messages == 1
    assert inbound.get().mid == 1
    assert inbound.get() == _Applied(7)


def test_a_stopping_bridge_queues_no_more_qos_0() -> None:
    stop = threading.Event()
    inbound: InboundQueue[Any] = InboundQueue(10, Incoming, stop)
    stop.set()  # nobody will apply anything more
    inbound.put(message(1, qos=0))
    inbound.put(message(2))  # unacknowledged QoS 1: queued, the session keeps it for the next bridge anyway
    assert (inbound.dropped, inbound.qsize()) == (1, 1)


@pytest.fixture
def small_bridge(settings: Any) -> Iterator[Bridge]:
    """A bridge whose ``inbound`` holds 3 messages while its batches take up to 50."""
    settings.MQTT_SHARE_GROUP = f"test{uuid.uuid4().hex[:8]}"
    settings.BRIDGE_BATCH_SIZE = 50
    settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL = 0.1
    instance = Bridge("mqtt://127.0.0.1:1883", client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    instance.inbound = InboundQueue(3, Incoming, instance.stop)
    instance.start()
    assert instance.connected.wait(10), "bridge did not connect"
    assert instance.subscribed.wait(10), "bridge did not subscribe"
    yield instance
    instance.shutdown()


@pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883")
@pytest.mark.django_db(transaction=True)
def test_a_bridge_with_a_tiny_inbound_applies_and_acknowledges_everything(small_bridge: Bridge) -> None:
    """Hundreds of QoS 1 and QoS 0 messages through a queue of 3: QoS 0 ones are dropped when it is full,
    QoS 1 ones all applied and acknowledged; the consumer's acknowledgements and commit markers never wait."""
    agent_ids = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(40)]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        infos = []
        for agent_id in agent_ids:
            hello = envelope(
                "hello", agent_version="t", capabilities=["echo"], labels={}, max_concurrency=1, running=[]
            )
            infos.append(client.publish(f"aegis/agents/{agent_id}/hello", hello, qos=1))
        for seq in range(10):
            for agent_id in agent_ids:
                beat = envelope("heartbeat", seq=seq, running=[])
                infos.append(client.publish(f"aegis/agents/{agent_id}/heartbeat", beat, qos=seq % 2))
        for info in infos:
            info.wait_for_publish(30)
        wait_for(
            lambda: Agent.objects.filter(pk__in=agent_ids).count() == len(agent_ids), what="every hello", timeout=60
        )
        wait_for(
            lambda: Agent.objects.filter(pk__in=agent_ids, last_seen_at__isnull=False).count() == len(agent_ids),
            what="every agent's heartbeats flushed",
            timeout=60,
        )
        # The bridge counts a message unacknowledged before the queue takes or drops it: what it dropped (QoS 0,
        # never acknowledged) stays in the count.
        wait_for(
            lambda: small_bridge._unacknowledged == small_bridge.inbound.dropped,
            what="every queued message acknowledged",
            timeout=60,
        )
        assert small_bridge.inbound.messages == 0
        assert small_bridge.inbound.peak >= 3, "the queue never filled: the test did not test the bound"
        assert small_bridge.batches.count == 0  # no batch failed along the way
    finally:
        client.loop_stop()
        client.disconnect()
