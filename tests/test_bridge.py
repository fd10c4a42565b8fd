"""The bridge against a real Mosquitto (the machine's, 127.0.0.1:1883, plain TCP): agent traffic in, outbox out."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.bridge import Bridge
from broker.models import OutboxMessage
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, Task, TaskEvent
from tests.support import broker_reachable, envelope, mqtt_dropped, wait_for

BROKER = ("127.0.0.1", 1883)


pytestmark = [
    pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883"),
    pytest.mark.django_db(transaction=True),
]


class FakeAgent:
    """A bare MQTT client speaking protocol v1 by hand, so the test sees every byte the bridge sends."""

    def __init__(self, agent_id: str) -> None:
        self.id = agent_id
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.inbox.put(json.loads(m.payload))
        self.client.connect(*BROKER)
        self.client.subscribe(f"aegis/agents/{agent_id}/inbox", qos=1)
        self.client.loop_start()

    def send(self, channel: str, payload: bytes) -> None:
        self.client.publish(f"aegis/agents/{self.id}/{channel}", payload, qos=1).wait_for_publish(5)

    def hello(self, running: list[dict[str, int]] | None = None) -> None:
        self.send("status", envelope("status", state="online"))
        self.send(
            "hello",
            envelope(
                "hello",
                agent_version="test-1",
                capabilities=["echo"],
                labels={"zone": "test"},
                max_concurrency=4,
                running=running or [],
            ),
        )

    def next_message(self, timeout: float = 15.0) -> dict[str, Any]:
        return self.inbox.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def bridge(settings) -> Iterator[Bridge]:
    settings.MQTT_SHARE_GROUP = f"test{uuid.uuid4().hex[:8]}"  # other bridges on this broker don't take our messages
    settings.BRIDGE_OUTBOX_POLL_INTERVAL = 0.05
    settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL = 0.1
    instance = Bridge("mqtt://127.0.0.1:1883", client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    instance.start()
    assert instance.connected.wait(10), "bridge did not connect"
    assert instance.subscribed.wait(10), "bridge did not subscribe"  # before it, a hello reaches no one
    yield instance
    instance.shutdown()


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    yield fake
    fake.close()


def test_an_agent_says_hello_gets_a_task_and_the_job_completes(bridge, agent, spec, operator):
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id, connectivity=Connectivity.ONLINE).exists(), what="hello")
    stored = Agent.objects.get(pk=agent.id)
    assert (stored.version, stored.capabilities, stored.labels) == ("test-1", ["echo"], {"zone": "test"})

    job, _ = actions.submit_job(spec(target_agent_ids=[agent.id], payload={"say": "hi"}), operator)
    Dispatcher().assign()
    assignment = agent.next_message()
    assert assignment["type"] == "task.assign"
    task = assignment["task"]
    assert (task["job_id"], task["payload"], task["attempt"]) == (job.pk, {"say": "hi"}, 1)
    wait_for(lambda: not OutboxMessage.objects.filter(sent_at__isnull=True).exists(), what="outbox marked sent")

    agent.send("events", envelope("task.accepted", task_id=task["id"], attempt=1))
    agent.send("events", envelope("task.succeeded", task_id=task["id"], attempt=1, result={"said": "hi"}))
    wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", what="job succeeded")
    assert Task.objects.get(pk=task["id"]).result == {"said": "hi"}


def test_heartbeats_update_last_seen_in_coalesced_flushes(bridge, agent):
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello")
    before = Agent.objects.get(pk=agent.id).last_seen_at
    assert before is not None
    time.sleep(0.01)
    for seq in range(20):
        agent.send("heartbeat", envelope("heartbeat", seq=seq, running=[]))

    def moved() -> bool:
        seen = Agent.objects.get(pk=agent.id).last_seen_at
        return seen is not None and seen > before

    wait_for(moved, what="last_seen_at moved")


def test_the_last_will_or_offline_status_marks_the_agent_offline(bridge, agent):
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id, connectivity=Connectivity.ONLINE).exists(), what="online")
    agent.send("status", envelope("status", state="offline"))
    wait_for(lambda: Agent.objects.get(pk=agent.id).connectivity == Connectivity.OFFLINE, what="offline")


def test_malformed_messages_are_counted_and_dropped_and_the_bridge_keeps_working(bridge, agent, spec, operator):
    before = mqtt_dropped()
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello")
    agent.send("events", b"not json at all")
    agent.send("events", b"\xff\xfe")
    agent.send("events", json.dumps({"v": 1, "type": "task.succeeded"}).encode())
    agent.send("events", envelope("task.succeeded", task_id=1, attempt=1, result="x" * (300 * 1024)))
    agent.send("events", envelope("task.succeeded", task_id=999_999_999, attempt=1, result=None))

    expected = {"not_json": 1, "not_utf8": 1, "missing_field": 1, "oversized": 1, "unknown_task": 1}

    def counted() -> bool:
        delta = mqtt_dropped() - before
        return all(delta[reason] >= count for reason, count in expected.items())

    wait_for(counted, what=f"drops counted: {expected}")
    # Still alive: a normal round trip works after the garbage.
    job, _ = actions.submit_job(spec(target_agent_ids=[agent.id]), operator)
    Dispatcher().assign()
    task = agent.next_message()["task"]
    result = envelope("task.succeeded", task_id=task["id"], attempt=1, result={})
    agent.send("events", result)
    wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", what="job succeeded after garbage")
    agent.send("events", result)  # replayed message id
    wait_for(lambda: (mqtt_dropped() - before)["duplicate"] >= 1, what="replay counted as duplicate")
    assert TaskEvent.objects.filter(task_id=task["id"], kind="succeeded").count() == 1


def test_events_about_another_agents_task_change_nothing(bridge, spec, operator):
    owner, intruder = FakeAgent(f"t-{uuid.uuid4().hex[:10]}"), FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    try:
        owner.hello()
        intruder.hello()
        wait_for(lambda: Agent.objects.filter(pk__in=[owner.id, intruder.id]).count() == 2, what="both hello")
        job, _ = actions.submit_job(spec(target_agent_ids=[owner.id]), operator)
        Dispatcher().assign()
        task = owner.next_message()["task"]
        intruder.send("events", envelope("task.succeeded", task_id=task["id"], attempt=1, result={"forged": True}))
        owner.send("events", envelope("task.accepted", task_id=task["id"], attempt=1))
        wait_for(lambda: Task.objects.get(pk=task["id"]).state == "running", what="owner's accept applied")
        stored = Task.objects.get(pk=task["id"])
        assert stored.result is None
        assert Job.objects.get(pk=job.pk).state == "running"
    finally:
        owner.close()
        intruder.close()


def test_hello_after_a_restart_resends_the_assignment_the_agent_lacks(bridge, agent, spec, operator):
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello")
    actions.submit_job(spec(target_agent_ids=[agent.id]), operator)
    Dispatcher().assign()
    first = agent.next_message()
    agent.hello(running=[])  # the agent "restarted" and lost it
    again = agent.next_message()
    assert again["type"] == "task.assign"
    assert again["task"]["id"] == first["task"]["id"]
    assert again["task"]["attempt"] == first["task"]["attempt"]


def test_threads_stop_cleanly(settings):
    settings.MQTT_SHARE_GROUP = f"test{uuid.uuid4().hex[:8]}"
    instance = Bridge("mqtt://127.0.0.1:1883", client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    instance.start()
    assert instance.connected.wait(10)
    instance.shutdown()
    assert not any(thread.is_alive() for thread in instance._threads)
    assert threading.active_count() < 50


def test_an_agent_whose_hello_nobody_heard_is_asked_for_it_again(bridge, agent):
    """A new share group receives nothing published before it subscribed; heartbeats reveal the agent."""
    for seq in range(3):
        agent.send("heartbeat", envelope("heartbeat", seq=seq, running=[]))
    request = agent.next_message()
    assert request["type"] == "ping"
    assert request["hello"] is True
    assert not Agent.objects.filter(pk=agent.id).exists()
    agent.hello()  # what the reference agent does on such a ping
    wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello stored")
