"""Messages the broker acknowledged with reason 16 ("No matching subscribers") are published again."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from aegis_agent.redelivery import NO_MATCHING_SUBSCRIBERS, Redelivery


@dataclass
class Reason:
    value: int


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.again = threading.Event()
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        self._mid += 1
        self.published.append((topic, payload, retain))
        if len(self.published) > 1:
            self.again.set()
        info = mqtt.MQTTMessageInfo(self._mid)
        info.rc = mqtt.MQTT_ERR_SUCCESS
        return info


def test_a_message_routed_to_nobody_is_published_again():
    redelivery, client = Redelivery(), FakeClient()
    info = redelivery.publish(client, "aegis/agents/a/events", b"result", retain=False)
    redelivery.on_publish(client, info.mid, Reason(NO_MATCHING_SUBSCRIBERS))
    assert client.again.wait(5)
    assert client.published == [("aegis/agents/a/events", b"result", False)] * 2


def test_a_delivered_message_is_forgotten_and_not_published_again():
    redelivery, client = Redelivery(), FakeClient()
    info = redelivery.publish(client, "aegis/agents/a/events", b"result")
    redelivery.on_publish(client, info.mid, Reason(0))
    assert not client.again.wait(1.0)
    assert redelivery._sent == {}


def test_retries_back_off_and_a_runner_decides_the_thread():
    ran_by: list[str] = []

    def runner(fn: Any, *args: Any) -> None:
        ran_by.append("runner")
        fn(*args)

    redelivery, client = Redelivery(), FakeClient()
    info = redelivery.publish(client, "aegis/agents/a/hello", b"hello", runner=runner)
    redelivery.on_publish(client, info.mid, Reason(NO_MATCHING_SUBSCRIBERS))
    assert client.again.wait(5)
    assert ran_by == ["runner"]
    (pending,) = redelivery._sent.values()
    assert pending[3] == 1.0  # the next wait doubles
