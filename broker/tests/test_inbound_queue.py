"""The bridge's ``inbound`` queue holds at most so many messages (``broker.client.InboundQueue``).

QoS 0 heartbeats are not bounded by MQTT 5's ReceiveMaximum, so a fleet that sends
faster than the bridge applies grew an unbounded queue. A full queue makes paho's
network thread wait; the consumer's commit marker must never wait (the thread that puts
it is the one that frees room), and a stopping bridge must not leave the network thread
waiting forever (``loop_stop`` joins it).
"""

from __future__ import annotations

import queue
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


def message(mid: int) -> Incoming:
    return Incoming("aegis/agents/a1/heartbeat", b"{}", mid)


def put_in_thread(inbound: InboundQueue[Any], item: Any) -> threading.Thread:
    thread = threading.Thread(target=inbound.put, args=(item,), daemon=True)
    thread.start()
    return thread


def test_a_message_beyond_the_maximum_waits_for_room() -> None:
    inbound: InboundQueue[Any] = InboundQueue(2, Incoming, threading.Event())
    inbound.put(message(1))
    inbound.put(message(2))
    with pytest.raises(queue.Full):
        inbound.put(message(3), block=False)
    with pytest.raises(queue.Full):
        inbound.put(message(3), timeout=0.01)
    waiting = put_in_thread(inbound, message(3))
    waiting.join(0.2)
    assert waiting.is_alive(), "a third message went in past the maximum of 2"
    assert inbound.get().mid == 1
    waiting.join(30)
    assert not waiting.is_alive()
    assert [inbound.get().mid, inbound.get().mid] == [2, 3]
    assert inbound.messages == 0


def test_the_commit_marker_goes_in_when_the_queue_is_full_and_keeps_its_place() -> None:
    inbound: InboundQueue[Any] = InboundQueue(1, Incoming, threading.Event())
    inbound.put(message(1))
    inbound.put(_Applied(7), block=False)  # would raise queue.Full if the marker counted
    assert inbound.messages == 1
    assert inbound.get().mid == 1
    assert inbound.get() == _Applied(7)


def test_a_stopping_bridge_leaves_no_put_waiting() -> None:
    stop = threading.Event()
    inbound: InboundQueue[Any] = InboundQueue(1, Incoming, stop)
    inbound.put(message(1))
    waiting = put_in_thread(inbound, message(2))
    waiting.join(0.2)
    assert waiting.is_alive()
    stop.set()  # nobody takes any more: the network thread must be free to be joined
    waiting.join(30)
    assert not waiting.is_alive()
    inbound.put(message(3), block=False)  # nothing waits after the stop either
    assert inbound.qsize() == 3


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
    """Hundreds of QoS 1 and QoS 0 messages through a queue of 3: the network thread waits on the
    consumer again and again; the consumer's acknowledgements and commit markers never wait on it."""
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
        wait_for(lambda: small_bridge._unacknowledged == 0, what="every QoS 1 message acknowledged", timeout=60)
        assert small_bridge.inbound.messages == 0
        assert small_bridge.inbound.waited_s > 0, "the queue never filled: the test did not test the bound"
        assert small_bridge.batches.count == 0  # no batch failed along the way
    finally:
        client.loop_stop()
        client.disconnect()


def test_past_its_wait_a_full_queue_drops_qos_0_and_takes_qos_1_until_the_consumer_makes_room() -> None:
    """paho's thread must not fall silent longer than the keepalive: past ``max_wait_s`` it stops waiting."""
    inbound: InboundQueue[Any] = InboundQueue(2, Incoming, threading.Event())
    inbound.max_wait_s = 0.05
    inbound.put(message(1))
    inbound.put(message(2))
    inbound.put(Incoming("aegis/agents/a1/heartbeat", b"{}", 0, qos=0))  # waits 0.05 s, then dropped
    assert (inbound.overflowing, inbound.dropped) == (True, 1)
    inbound.put(Incoming("aegis/agents/a1/heartbeat", b"{}", 0, qos=0))  # overflowing: dropped without a wait
    inbound.put(message(3))  # QoS 1 is bounded by ReceiveMaximum: queued over the bound
    assert (inbound.dropped, inbound.messages) == (2, 3)
    assert [inbound.get().mid for _ in range(2)] == [1, 2]  # room again: no longer overflowing
    assert not inbound.overflowing
    inbound.put(Incoming("aegis/agents/a1/heartbeat", b"{}", 0, qos=0))
    assert [(item.mid, item.qos) for item in (inbound.get(), inbound.get())] == [(3, 1), (0, 0)]
    assert inbound.dropped == 2
