"""A real Mosquitto at 127.0.0.1:1883 (plain TCP, anonymous) and a peer that plays the server."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from aegis_agent.agent import Agent
from aegis_agent.config import AgentConfig

HOST, PORT = "127.0.0.1", 1883
WAIT_S = 10.0


def _broker_reachable() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _require_broker() -> None:
    if not _broker_reachable():
        pytest.skip(f"needs an MQTT broker at {HOST}:{PORT} (plain TCP, anonymous allowed)")


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def inbox_message(message_type: str, **fields: Any) -> bytes:
    message = {"v": 1, "id": uuid.uuid4().hex, "ts": "2026-01-01T12:00:00Z", "type": message_type, **fields}
    return json.dumps(message).encode()


def assign(task_id: int, kind: str = "echo", payload: Any = None, attempt: int = 1, timeout_s: int = 30) -> bytes:
    task = {"id": task_id, "attempt": attempt, "job_id": 7, "kind": kind, "payload": payload}
    return inbox_message("task.assign", task={**task, "timeout_s": timeout_s, "lease_s": 60})


class Peer:
    """Plays the control plane: records what agents publish, writes to their inboxes."""

    def __init__(self, topic_filter: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("peer"), protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(WAIT_S), "peer subscription not acknowledged"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return  # e.g. an empty retained message clearing a topic
        with self._cond:
            self.messages.append((message.topic, body, bool(message.retain)))
            self._cond.notify_all()

    def find(self, predicate: Callable[[str, dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._cond:
            return [body for topic, body, _ in self.messages if predicate(topic, body)]

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], count: int = 1, timeout: float = WAIT_S
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [body for topic, body, _ in self.messages if predicate(topic, body)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"waited {timeout}s for {count} message(s), got {len(found)}: {found}")
                self._cond.wait(remaining)

    def event(self, agent_id: str, event_type: str, task_id: Any = None, count: int = 1, timeout: float = WAIT_S):
        def match(topic: str, body: dict[str, Any]) -> bool:
            return (
                topic == f"aegis/agents/{agent_id}/events"
                and body.get("type") == event_type
                and (task_id is None or body.get("task_id") == task_id)
            )

        return self.wait_for(match, count, timeout)

    def events_of(self, agent_id: str, task_id: Any) -> list[str]:
        topic = f"aegis/agents/{agent_id}/events"
        return [b["type"] for b in self.find(lambda t, b: t == topic and b.get("task_id") == task_id)]

    def on_topic(self, topic: str, count: int = 1, timeout: float = WAIT_S, **fields: Any) -> list[dict[str, Any]]:
        return self.wait_for(lambda t, b: t == topic and all(b.get(k) == v for k, v in fields.items()), count, timeout)

    def send(self, agent_id: str, payload: bytes) -> None:
        self.client.publish(f"aegis/agents/{agent_id}/inbox", payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(agent_id: str) -> None:
    """Remove the agent's retained status so the broker does not keep test leftovers."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("cleanup"), protocol=mqtt.MQTTv5)
    client.connect(HOST, PORT)
    client.loop_start()
    client.publish(f"aegis/agents/{agent_id}/status", b"", qos=1, retain=True).wait_for_publish(WAIT_S)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def agent_id() -> Iterator[str]:
    value = unique_id("agent")
    yield value
    clear_retained(value)


@pytest.fixture
def peer(agent_id: str) -> Iterator[Peer]:
    p = Peer(f"aegis/agents/{agent_id}/#")
    yield p
    p.close()


@pytest.fixture
def make_agent(agent_id: str, peer: Peer) -> Iterator[Callable[..., Agent]]:
    """Start an agent and wait for its hello: the broker handled its SUBSCRIBE before that publish."""
    started: list[Agent] = []

    def make(**settings: Any) -> Agent:
        settings.setdefault("heartbeat_interval_s", 0.5)
        settings.setdefault("shutdown_grace_s", 2.0)
        config = AgentConfig(agent_id=agent_id, host=HOST, port=PORT, **settings)
        agent = Agent(config)
        agent.start()
        started.append(agent)
        assert agent.wait_connected(WAIT_S), "agent did not connect"
        peer.on_topic(f"aegis/agents/{agent_id}/hello", count=len(started))
        return agent

    yield make
    for agent in started:
        agent.stop(grace_s=2.0)
