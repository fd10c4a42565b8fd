"""The shell handler streams its output while the command runs, and a timeout or a cancel still ends it."""

from __future__ import annotations

import sys
from pathlib import Path

from aegis_agent.tests.conftest import assign, inbox_message

# Prints a line on each stream, then waits for the gate file (or forever), then prints a last line. Each line is
# one write: print() writes the text and its newline separately when stdout is unbuffered (PYTHONUNBUFFERED=1),
# and the two pipes are read by two threads, so the other stream's line could then come between them.
GATED = r"""
import os, sys, time
sys.stdout.write("before the gate\n"); sys.stdout.flush()
sys.stderr.write("warming up\n"); sys.stderr.flush()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
sys.stdout.write("after the gate\n"); sys.stdout.flush()
"""


def logs_of(peer, agent_id: str, task_id: int, count: int = 1) -> list[dict]:
    topic = f"aegis/agents/{agent_id}/logs"
    return peer.wait_for(lambda t, b: t == topic and b.get("task_id") == task_id, count)


def test_shell_output_arrives_while_the_command_still_runs(make_agent, peer, agent_id, tmp_path: Path):
    make_agent(shell_allow=[sys.executable])
    gate = tmp_path / "gate"
    peer.send(agent_id, assign(21, "shell", {"argv": [sys.executable, "-c", GATED, str(gate)]}))
    early = logs_of(peer, agent_id, 21, count=2)  # both streams, before the gate opens
    assert peer.events_of(agent_id, 21) == ["task.accepted"]  # still running
    assert {(m["stream"], m["data"]) for m in early} == {("stdout", "before the gate\n"), ("stderr", "warming up\n")}
    gate.touch()
    result = peer.event(agent_id, "task.succeeded", 21)[0]["result"]
    assert result["stdout"] == "before the gate\nafter the gate\n"  # the result keeps its fields
    assert result["stderr"] == "warming up\n"
    chunks = logs_of(peer, agent_id, 21, count=3)
    assert sorted(m["seq"] for m in chunks) == [1, 2, 3]
    assert max(chunks, key=lambda m: m["seq"])["data"] == "after the gate\n"


def test_a_shell_timeout_kills_the_command_and_keeps_what_it_printed(make_agent, peer, agent_id, tmp_path: Path):
    make_agent(shell_allow=[sys.executable])
    argv = [sys.executable, "-c", GATED, str(tmp_path / "never")]
    peer.send(agent_id, assign(22, "shell", {"argv": argv, "timeout_s": 1}))
    failed = peer.event(agent_id, "task.failed", 22)[0]
    assert failed["error"]["code"] == "timeout"
    printed = {m["data"] for m in logs_of(peer, agent_id, 22, count=2)}
    assert printed == {"before the gate\n", "warming up\n"}


def test_a_cancel_kills_a_streaming_shell_command(make_agent, peer, agent_id, tmp_path: Path):
    make_agent(shell_allow=[sys.executable])
    argv = [sys.executable, "-c", GATED, str(tmp_path / "never")]
    peer.send(agent_id, assign(23, "shell", {"argv": argv}))
    logs_of(peer, agent_id, 23, count=2)
    peer.send(agent_id, inbox_message("task.cancel", task_id=23, attempt=1))
    failed = peer.event(agent_id, "task.failed", 23)[0]
    assert failed["error"]["code"] == "canceled"
