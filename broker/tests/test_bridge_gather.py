"""The bridge gathers and decodes the next batch while the consumer applies the previous one (``Bridge._gather``).

No broker is needed: the test feeds ``inbound`` as paho's thread would, and plays the consumer's
commit by putting the ``_Applied`` marker the pump puts there after an acknowledgement.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from broker.bridge import Bridge, _Applied
from broker.ingest import Incoming
from broker.protocol import Heartbeat, ProtocolError

pytestmark = pytest.mark.timeout(60)


def heartbeat(agent_id: str, mid: int) -> Incoming:
    payload = {"v": 1, "id": f"m{mid}", "ts": "2026-12-07T12:00:00Z", "type": "heartbeat", "seq": mid, "running": []}
    return Incoming(f"aegis/agents/{agent_id}/heartbeat", json.dumps(payload).encode(), mid)


@pytest.fixture
def bridge() -> Bridge:
    return Bridge("mqtt://127.0.0.1:1883", client_id="gather-test")  # never connected


def gather_in_thread(bridge: Bridge, in_flight: int | None) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(batch=bridge._gather(in_flight, lambda: False)))
    thread.start()
    return thread, result


def test_with_nothing_in_flight_it_takes_what_is_there_decoded(bridge: Bridge) -> None:
    bridge.inbound.put(heartbeat("a1", 1))
    bridge.inbound.put(Incoming("aegis/agents/a1/heartbeat", b"{not json", 2))
    batch = bridge._gather(None, lambda: False)
    assert [item.mid for item in batch.items] == [1, 2]
    assert isinstance(batch.messages[0], Heartbeat)
    assert isinstance(batch.messages[1], ProtocolError)
    assert batch.messages[1].code == "not_json"
    assert len(bridge._gather(None, lambda: False)) == 0  # nothing more: an empty batch after the wait


def test_with_a_batch_in_flight_it_keeps_gathering_until_that_batch_committed(bridge: Bridge) -> None:
    thread, result = gather_in_thread(bridge, in_flight=7)
    bridge.inbound.put(heartbeat("a1", 1))
    bridge.inbound.put(_Applied(6))  # an earlier batch's marker: not the one in flight, ignored
    bridge.inbound.put(heartbeat("a2", 2))
    thread.join(1.0)
    assert thread.is_alive(), "handed over before the batch in flight committed"
    bridge.inbound.put(_Applied(7))
    thread.join(30)
    assert not thread.is_alive()
    assert [item.mid for item in result["batch"].items] == [1, 2]


def test_a_full_batch_is_handed_over_without_waiting_for_the_commit(bridge: Bridge, settings: Any) -> None:
    settings.BRIDGE_BATCH_SIZE = 3  # small, so that three messages fill it
    for mid in range(1, 5):
        bridge.inbound.put(heartbeat("a1", mid))
    batch = bridge._gather(7, lambda: False)  # the marker of batch 7 never comes
    assert [item.mid for item in batch.items] == [1, 2, 3]


def test_a_dead_consumer_ends_the_gathering(bridge: Bridge) -> None:
    bridge.inbound.put(heartbeat("a1", 1))
    batch = bridge._gather(7, lambda: True)  # no marker will come from a consumer that died
    assert [item.mid for item in batch.items] == [1]


def event(kind: str, mid: int, task_id: int = 812) -> Incoming:
    payload = {"v": 1, "id": f"m{mid}", "ts": "2026-12-07T12:00:00Z", "type": f"task.{kind}", "task_id": task_id}
    payload |= {"attempt": 1, **({"result": {}} if kind == "succeeded" else {})}
    return Incoming("aegis/agents/a1/events", json.dumps(payload).encode(), mid)


def test_an_acceptance_waits_for_the_result_that_follows_it(bridge: Bridge, settings: Any) -> None:
    settings.BRIDGE_LINGER_MS = 600_000  # far longer than the test: the result must end the wait, not the clock
    thread, result = gather_in_thread(bridge, in_flight=None)
    bridge.inbound.put(event("accepted", 1))
    thread.join(1.0)
    assert thread.is_alive(), "an acceptance was handed over alone while its result could still follow"
    bridge.inbound.put(event("succeeded", 2))
    thread.join(30)
    assert not thread.is_alive()
    assert [item.mid for item in result["batch"].items] == [1, 2]  # one transaction for both


def test_a_result_or_a_heartbeat_is_never_held_back(bridge: Bridge, settings: Any) -> None:
    settings.BRIDGE_LINGER_MS = 600_000  # were either held back, the test would time out
    bridge.inbound.put(event("succeeded", 1))
    assert [item.mid for item in bridge._gather(None, lambda: False).items] == [1]
    bridge.inbound.put(event("accepted", 2))
    bridge.inbound.put(event("failed", 3, task_id=813))
    bridge.inbound.put(heartbeat("a1", 4))
    assert [item.mid for item in bridge._gather(None, lambda: False).items] == [2, 3, 4]


def test_the_wait_for_a_follow_up_is_bounded(bridge: Bridge, settings: Any) -> None:
    settings.BRIDGE_LINGER_MS = 1
    bridge.inbound.put(event("accepted", 1))
    assert [item.mid for item in bridge._gather(None, lambda: False).items] == [1]  # nothing followed: handed alone
    settings.BRIDGE_LINGER_MS = 0  # off
    bridge.inbound.put(event("progress", 2))
    assert [item.mid for item in bridge._gather(None, lambda: False).items] == [2]
