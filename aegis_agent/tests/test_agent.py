"""The reference agent against a real broker, with the test playing the control plane."""

from __future__ import annotations

import sys
import time

from aegis_agent.tests.conftest import assign, inbox_message


def test_hello_lists_version_capabilities_labels_and_concurrency(make_agent, peer, agent_id):
    make_agent(labels={"site": "lab"}, max_concurrency=3, shell_allow=["true"])
    hello = peer.on_topic(f"aegis/agents/{agent_id}/hello")[0]
    assert hello["v"] == 1
    assert hello["type"] == "hello"
    assert len(hello["id"]) == 32
    assert hello["capabilities"] == ["echo", "shell", "sleep"]
    assert hello["labels"] == {"site": "lab"}
    assert hello["max_concurrency"] == 3
    assert hello["running"] == []
    status = peer.on_topic(f"aegis/agents/{agent_id}/status", state="online")[0]
    assert status["type"] == "status"


def test_shell_is_not_advertised_without_an_allow_list(make_agent, peer, agent_id):
    make_agent()
    assert peer.on_topic(f"aegis/agents/{agent_id}/hello")[0]["capabilities"] == ["echo", "sleep"]


def test_heartbeats_carry_increasing_sequence_numbers(make_agent, peer, agent_id):
    make_agent(heartbeat_interval_s=0.2)
    beats = peer.on_topic(f"aegis/agents/{agent_id}/heartbeat", count=3)
    assert [b["seq"] for b in beats[:3]] == [1, 2, 3]
    assert beats[0]["running"] == []


def test_echo_is_accepted_and_succeeds_with_the_payload(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(1, "echo", {"hello": "world"}))
    succeeded = peer.event(agent_id, "task.succeeded", 1)[0]
    assert succeeded["attempt"] == 1
    assert succeeded["result"] == {"hello": "world"}
    assert peer.events_of(agent_id, 1) == ["task.accepted", "task.succeeded"]


def test_sleep_reports_progress_then_succeeds(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(2, "sleep", {"seconds": 0.6}))
    peer.event(agent_id, "task.succeeded", 2)
    kinds = peer.events_of(agent_id, 2)
    assert kinds[0] == "task.accepted"
    assert kinds[-1] == "task.succeeded"
    progress = peer.find(lambda t, b: b.get("type") == "task.progress" and b.get("task_id") == 2)
    assert progress, kinds
    assert 0 < progress[0]["progress"]["fraction"] < 1


def test_running_task_is_listed_in_heartbeats(make_agent, peer, agent_id):
    make_agent(heartbeat_interval_s=0.2)
    peer.send(agent_id, assign(3, "sleep", {"seconds": 3}))
    peer.event(agent_id, "task.accepted", 3)
    peer.wait_for(lambda t, b: t.endswith("/heartbeat") and {"task_id": 3, "attempt": 1} in b["running"])


def test_shell_runs_an_allowed_command_without_a_shell(make_agent, peer, agent_id):
    make_agent(shell_allow=[sys.executable])
    peer.send(agent_id, assign(4, "shell", {"argv": [sys.executable, "-c", "print('hi; echo no')"]}))
    result = peer.event(agent_id, "task.succeeded", 4)[0]["result"]
    assert result["exit_code"] == 0
    assert result["stdout"] == "hi; echo no\n"
    assert result["truncated"] is False


def test_shell_output_is_bounded(make_agent, peer, agent_id):
    make_agent(shell_allow=[sys.executable], shell_max_output_bytes=100)
    peer.send(agent_id, assign(5, "shell", {"argv": [sys.executable, "-c", "print('x' * 10000)"]}))
    result = peer.event(agent_id, "task.succeeded", 5)[0]["result"]
    assert len(result["stdout"]) == 100
    assert result["truncated"] is True


def test_shell_refuses_a_command_outside_the_allow_list(make_agent, peer, agent_id):
    make_agent(shell_allow=["true"])
    peer.send(agent_id, assign(6, "shell", {"argv": ["rm", "-rf", "/tmp/nothing-here"]}))
    failed = peer.event(agent_id, "task.failed", 6)[0]
    assert failed["error"]["code"] == "command_not_allowed"
    assert "'rm' is not in this agent's shell allow-list" in failed["error"]["message"]
    assert failed["retryable"] is False


def test_shell_nonzero_exit_fails(make_agent, peer, agent_id):
    make_agent(shell_allow=["false"])
    peer.send(agent_id, assign(7, "shell", {"argv": ["false"]}))
    assert peer.event(agent_id, "task.failed", 7)[0]["error"]["code"] == "nonzero_exit"


def test_unknown_kind_is_rejected(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(8, "teleport", {}))
    rejected = peer.event(agent_id, "task.rejected", 8)[0]
    assert rejected == {**rejected, "attempt": 1, "reason": "unknown_kind"}
    assert peer.events_of(agent_id, 8) == ["task.rejected"]


def test_duplicate_assign_runs_the_task_once(make_agent, peer, agent_id):
    make_agent()
    message = assign(9, "sleep", {"seconds": 0.5})
    peer.send(agent_id, message)
    peer.send(agent_id, assign(9, "sleep", {"seconds": 0.5}))  # same task and attempt, new message id
    peer.send(agent_id, message)  # the very same message, redelivered
    peer.event(agent_id, "task.succeeded", 9)
    time.sleep(0.3)
    kinds = peer.events_of(agent_id, 9)
    assert kinds.count("task.accepted") == 1
    assert kinds.count("task.succeeded") == 1


def test_duplicate_assign_of_a_finished_task_resends_the_same_result(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(10, "echo", {"n": 1}))
    first = peer.event(agent_id, "task.succeeded", 10)[0]
    peer.send(agent_id, assign(10, "echo", {"n": 1}))
    again = peer.event(agent_id, "task.succeeded", 10, count=2)
    assert again[1]["id"] == first["id"]  # the server dedups it by message id
    assert peer.events_of(agent_id, 10).count("task.accepted") == 1


def test_assign_for_an_older_attempt_is_ignored(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(11, "sleep", {"seconds": 1}, attempt=2))
    peer.event(agent_id, "task.accepted", 11)
    peer.send(agent_id, assign(11, "echo", {}, attempt=1))
    peer.event(agent_id, "task.succeeded", 11)
    attempts = [b["attempt"] for b in peer.find(lambda t, b: b.get("task_id") == 11)]
    assert set(attempts) == {2}


def test_cancel_stops_a_sleeping_task_quickly(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(12, "sleep", {"seconds": 30}))
    peer.event(agent_id, "task.accepted", 12)
    started = time.monotonic()
    peer.send(agent_id, inbox_message("task.cancel", task_id=12, attempt=1, force=False))
    failed = peer.event(agent_id, "task.failed", 12, timeout=5)[0]
    assert time.monotonic() - started < 3
    assert failed["error"]["code"] == "canceled"
    assert failed["retryable"] is False


def test_task_timeout_fails_the_task(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(13, "sleep", {"seconds": 30}, timeout_s=1))
    failed = peer.event(agent_id, "task.failed", 13, timeout=5)[0]
    assert failed["error"]["code"] == "timeout"


def test_drain_finishes_running_work_and_rejects_new_work(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, assign(14, "sleep", {"seconds": 0.8}))
    peer.event(agent_id, "task.accepted", 14)
    peer.send(agent_id, inbox_message("agent.drain"))
    peer.send(agent_id, assign(15, "echo", {}))
    assert peer.event(agent_id, "task.rejected", 15)[0]["reason"] == "draining"
    peer.event(agent_id, "task.succeeded", 14)


def test_resume_after_drain_takes_new_work_again(make_agent, peer, agent_id):
    make_agent()
    peer.send(agent_id, inbox_message("agent.drain"))
    peer.send(agent_id, assign(20, "echo", {}))
    assert peer.event(agent_id, "task.rejected", 20)[0]["reason"] == "draining"
    peer.send(agent_id, inbox_message("agent.resume"))
    peer.send(agent_id, assign(21, "echo", {"x": 1}))
    assert peer.event(agent_id, "task.succeeded", 21)[0]["result"] == {"x": 1}


def test_assignments_beyond_max_concurrency_are_rejected(make_agent, peer, agent_id):
    make_agent(max_concurrency=1)
    peer.send(agent_id, assign(16, "sleep", {"seconds": 1}))
    peer.event(agent_id, "task.accepted", 16)
    peer.send(agent_id, assign(17, "echo", {}))
    assert peer.event(agent_id, "task.rejected", 17)[0]["reason"] == "at_capacity"


def test_invalid_inbox_messages_are_dropped_and_the_agent_keeps_working(make_agent, peer, agent_id):
    make_agent()
    for junk in (
        b"not json",
        b"[1, 2]",
        b'{"v": 2, "id": "x", "ts": "2026-01-01T00:00:00Z", "type": "ping"}',
        inbox_message("task.assign", task={"id": 18}),
        inbox_message("task.explode"),
        b"\xff\xfe",
        b"{" * 300_000,
    ):
        peer.send(agent_id, junk)
    peer.send(agent_id, assign(19, "echo", {"ok": True}))
    assert peer.event(agent_id, "task.succeeded", 19)[0]["result"] == {"ok": True}
    assert peer.find(lambda t, b: t.endswith("/events") and b.get("task_id") == 18) == []


def test_ping_is_answered_with_a_heartbeat(make_agent, peer, agent_id):
    make_agent(heartbeat_interval_s=60)
    peer.send(agent_id, inbox_message("ping"))
    peer.on_topic(f"aegis/agents/{agent_id}/heartbeat")


def test_a_ping_asking_for_hello_gets_a_fresh_hello(make_agent, peer, agent_id):
    make_agent()
    first = peer.on_topic(f"aegis/agents/{agent_id}/hello")[0]
    peer.send(agent_id, inbox_message("ping", hello=True))
    hellos = peer.wait_for(lambda t, b: t == f"aegis/agents/{agent_id}/hello" and b["id"] != first["id"])
    assert hellos[0]["type"] == "hello"
