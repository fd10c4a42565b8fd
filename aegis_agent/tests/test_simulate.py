"""The fleet simulator: many agents, one process, a handful of threads."""

from __future__ import annotations

import threading
import uuid

import pytest

from aegis_agent.simulate import Fleet
from aegis_agent.tests.conftest import Peer, assign, clear_retained, inbox_message


@pytest.fixture
def prefix():
    return f"sim-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def fleet_peer(prefix):
    peer = Peer("aegis/agents/+/#")
    yield peer
    peer.close()


def _ours(prefix, kind):
    return lambda topic, body: topic.startswith(f"aegis/agents/{prefix}") and topic.endswith(f"/{kind}")


def test_fifty_agents_say_hello_and_complete_echo_tasks_on_few_threads(prefix, fleet_peer):
    threads_before = threading.active_count()  # other tests (a database pool, a bridge) may have left some
    fleet = Fleet(50, port=1883, prefix=prefix, heartbeat_s=1.0, seed=1)
    try:
        fleet.start(wait_s=10)
        hellos = fleet_peer.wait_for(_ours(prefix, "hello"), count=50)
        assert {h["max_concurrency"] for h in hellos} == {8}
        assert threading.active_count() - threads_before < 12  # fifty agents, a handful of threads
        for n, agent_id in enumerate(fleet.agent_ids):
            fleet_peer.send(agent_id, assign(n, "echo", {"n": n}))
        done = fleet_peer.wait_for(lambda t, b: _ours(prefix, "events")(t, b) and b["type"] == "task.succeeded", 50)
        assert sorted(b["result"]["n"] for b in done) == list(range(50))
        assert fleet.stats.accepted == 50
        fleet_peer.wait_for(_ours(prefix, "heartbeat"), count=50)
        assert threading.active_count() - threads_before < 12
    finally:
        fleet.stop()
    fleet_peer.wait_for(lambda t, b: _ours(prefix, "status")(t, b) and b["state"] == "offline", 50)
    for agent_id in fleet.agent_ids:
        clear_retained(agent_id)


def test_failure_rate_duration_cancel_and_duplicates(prefix, fleet_peer):
    fleet = Fleet(2, port=1883, prefix=prefix, duration_ms=300, failure_rate=1.0, seed=2)
    a, b = fleet.agent_ids
    try:
        fleet.start(wait_s=10)
        fleet_peer.wait_for(_ours(prefix, "hello"), count=2)
        fleet_peer.send(a, assign(1, "noop", {}))
        fleet_peer.send(a, assign(1, "noop", {}))  # duplicate: ignored
        fleet_peer.send(b, assign(2, "sleep", {"seconds": 30}))
        fleet_peer.send(b, assign(3, "teleport", {}))
        events = lambda agent: lambda t, body: t == f"aegis/agents/{agent}/events"  # noqa: E731
        failed = fleet_peer.wait_for(lambda t, body: events(a)(t, body) and body["type"] == "task.failed")[0]
        assert failed["error"]["code"] == "simulated_failure"
        assert failed["retryable"] is True
        rejected = fleet_peer.wait_for(lambda t, body: events(b)(t, body) and body["type"] == "task.rejected")[0]
        assert rejected["reason"] == "unknown_kind"
        fleet_peer.send(b, inbox_message("task.cancel", task_id=2, attempt=1, force=False))
        canceled = fleet_peer.wait_for(lambda t, body: events(b)(t, body) and body["type"] == "task.failed")[0]
        assert canceled["error"]["code"] == "canceled"
        fleet_peer.send(b, inbox_message("agent.drain"))
        fleet_peer.send(b, assign(4, "noop", {}))
        drained = fleet_peer.wait_for(lambda t, body: events(b)(t, body) and body.get("task_id") == 4)[0]
        assert drained["reason"] == "draining"
        fleet_peer.send(b, inbox_message("agent.resume"))
        fleet_peer.send(b, assign(5, "noop", {}))
        resumed = fleet_peer.wait_for(lambda t, body: events(b)(t, body) and body.get("task_id") == 5)[0]
        assert resumed["type"] == "task.accepted"
        assert [body["type"] for body in fleet_peer.find(events(a))] == ["task.accepted", "task.failed"]
    finally:
        fleet.stop()
        for agent_id in fleet.agent_ids:
            clear_retained(agent_id)
