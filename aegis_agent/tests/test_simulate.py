"""The fleet simulator: many agents, one process, a handful of threads."""

from __future__ import annotations

import threading
import uuid

import pytest

from aegis_agent.simagent import OutputSpec
from aegis_agent.simulate import Fleet, main
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


def _chunks_of(peer, agent_id, task_id, attempt):
    topic = f"aegis/agents/{agent_id}/logs"
    return peer.find(lambda t, body: t == topic and body["task_id"] == task_id and body["attempt"] == attempt)


def test_tasks_print_their_output_gap_free_paced_and_before_their_result(prefix, fleet_peer):
    output = OutputSpec(bytes_per_task=60_000, rate_bps=100_000, chunk_bytes=4096, stderr_fraction=0.3)
    fleet = Fleet(1, port=1883, prefix=prefix, seed=3, output=output)
    (agent_id,) = fleet.agent_ids
    try:
        fleet.start(wait_s=10)
        fleet_peer.wait_for(_ours(prefix, "hello"))
        for attempt in (1, 2):  # a new attempt of the same task numbers its output from 1 again
            fleet_peer.send(agent_id, assign(9, "noop", {}, attempt=attempt))
            fleet_peer.event(agent_id, "task.succeeded", task_id=9, count=attempt, timeout=30)
            chunks = _chunks_of(fleet_peer, agent_id, 9, attempt)
            assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))  # gap-free, in order, once
            data = [c["data"].encode() for c in chunks]
            assert sum(map(len, data)) == 60_000
            assert all(len(d) <= 4096 for d in data)
            assert all("encoding" not in c for c in chunks)  # text, not base64
            assert {c["stream"] for c in chunks} == {"stdout", "stderr"}
            stamps = [float(d.split(b"\n", 1)[0].rsplit(b"t=", 1)[1]) for d in data]
            # Paced at 100,000 bytes/s: the last chunk cannot go out before its bytes were due (a lower bound,
            # which a slow machine only makes longer).
            assert stamps[-1] - stamps[0] >= (60_000 - 4096) / 100_000 - 0.01
        order = [
            (t, b.get("type"), b.get("attempt"))
            for t, b, _ in fleet_peer.messages
            if t.startswith(f"aegis/agents/{agent_id}/")
        ]
        for attempt in (1, 2):
            result = order.index((f"aegis/agents/{agent_id}/events", "task.succeeded", attempt))
            last_chunk = max(
                i for i, m in enumerate(order) if m == (f"aegis/agents/{agent_id}/logs", "task.log", attempt)
            )
            assert last_chunk < result  # every chunk reached the broker before the result was published
        printed = len(_chunks_of(fleet_peer, agent_id, 9, 1)) + len(_chunks_of(fleet_peer, agent_id, 9, 2))
        assert fleet.stats.log_chunks == printed
        assert fleet.stats.log_bytes == 120_000
    finally:
        fleet.stop()
        clear_retained(agent_id)


def test_a_canceled_task_stops_printing(prefix, fleet_peer):
    output = OutputSpec(bytes_per_task=10_000_000, rate_bps=20_000, chunk_bytes=1024)  # would take 500 s
    fleet = Fleet(1, port=1883, prefix=prefix, seed=4, output=output)
    (agent_id,) = fleet.agent_ids
    try:
        fleet.start(wait_s=10)
        fleet_peer.wait_for(_ours(prefix, "hello"))
        fleet_peer.send(agent_id, assign(5, "noop", {}))
        fleet_peer.wait_for(lambda t, body: t.endswith(f"{agent_id}/logs") and body["seq"] == 3)
        fleet_peer.send(agent_id, inbox_message("task.cancel", task_id=5, attempt=1, force=False))
        canceled = fleet_peer.event(agent_id, "task.failed", task_id=5)[0]
        assert canceled["error"]["code"] == "canceled"
        printed = fleet.stats.log_chunks
        fleet_peer.send(agent_id, assign(6, "noop", {}))  # a later task's chunks: the canceled one's would be before
        fleet_peer.wait_for(lambda t, body: t.endswith(f"{agent_id}/logs") and body["task_id"] == 6)
        assert len(_chunks_of(fleet_peer, agent_id, 5, 1)) == printed
    finally:
        fleet.stop()
        clear_retained(agent_id)


@pytest.mark.parametrize(
    "flags",
    [["--output-chunk", "16385"], ["--output-chunk", "64"], ["--output-stderr", "1.5"], ["--output-rate", "-1"]],
)
def test_bad_output_options_are_refused_at_start(flags, capsys):
    assert main(["--count", "1", "--output-bytes", "1000", *flags]) == 2
    assert "output" in capsys.readouterr().err


def test_a_simulated_agent_remembers_a_bounded_number_of_tasks(prefix, fleet_peer, monkeypatch):
    """The soak's hour: a simulator that was never restarted grew 38 -> 46 MB (the attempts of every task it
    ever ran, and 256 results per agent). Both are bounded per agent; the oldest go first."""
    from aegis_agent import simagent

    monkeypatch.setattr(simagent, "_REMEMBERED_ATTEMPTS", 5)
    monkeypatch.setattr(simagent, "_REMEMBERED_FINISHED", 3)
    fleet = Fleet(1, port=1883, prefix=prefix, seed=3)
    (agent_id,) = fleet.agent_ids
    try:
        fleet.start(wait_s=10)
        fleet_peer.wait_for(_ours(prefix, "hello"), count=1)
        for n in range(1, 13):
            fleet_peer.send(agent_id, assign(n, "noop", {}))
        done = lambda t, b: _ours(prefix, "events")(t, b) and b["type"] == "task.succeeded"  # noqa: E731
        fleet_peer.wait_for(done, count=12)
        agent = fleet.agents[0]
        assert list(agent.latest_attempt) == [8, 9, 10, 11, 12]
        assert [task_id for task_id, _ in agent.finished] == [10, 11, 12]
    finally:
        fleet.stop()
    clear_retained(agent_id)
