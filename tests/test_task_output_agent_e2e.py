"""Issue 17's acceptance test for task output: the reference agent runs a shell task printing 50 MB of mixed stdout
and stderr, with pauses; meanwhile the bridge is SIGKILLed (and started again) and the broker restarts (the agent
reconnects, its spool overflows to disk while the broker is away). Every byte arrives once and in order.

All real: Mosquitto from the generated configuration (TLS, ACL, aegis_auth), ``manage.py run_bridge`` as a process,
``python -m aegis_agent`` as a process with its own certificate, and the test database (SQLite or PostgreSQL).
The script gates itself on files the test creates, so the faults land while its output is flowing, whatever the
machine's speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Task, TaskLogAttempt, TaskLogChunk, TaskState
from tests import roles
from tests.support import wait_for
from tests.test_bridge_faults import MOSQUITTO, BridgeProcess, Broker, broker  # noqa: F401  (broker: a fixture)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
AGENT_ID = "output-agent"
TOTAL_BYTES = 50 * 1000 * 1000
WAIT_S = 90.0

# Writes TOTAL bytes in blocks of 1 B to 256 KiB, stdout text (ASCII with multi-byte characters, so chunks split
# some of them) and stderr raw bytes (NUL included: sent as base64), pausing now and then; it stops at a third and
# at two thirds until the test creates the gate files (saying how far it got in at_gate1, at_gate2), then records
# the sha256 of each stream.
SCRIPT = r"""
import hashlib, json, os, random, sys, time
folder, total = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
letters = bytes(range(32, 127)) * 2 + b"\n" * 18
table = bytes(letters[i % len(letters)] for i in range(256))
digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
gates = [(total // 3, "gate1"), (2 * total // 3, "gate2")]
written = 0
while written < total:
    if gates and written >= gates[0][0]:
        with open(os.path.join(folder, "at_" + gates[0][1]), "w") as at_gate:
            at_gate.write(str(written))
        while not os.path.exists(os.path.join(folder, gates[0][1])):
            time.sleep(0.02)
        gates.pop(0)
    size = min(total - written, rng.choice([1, 7, 100, 4096, 16384, 65536, 262144]))
    if rng.random() < 0.6:
        name, out = "stdout", sys.stdout.buffer
        block = rng.randbytes(size).translate(table)
        if size > 8:
            block = block[: size - 8] + "é€!\n".encode()
    else:
        name, out = "stderr", sys.stderr.buffer
        block = rng.randbytes(size)
    out.write(block)
    out.flush()
    digests[name].update(block)
    written += len(block)
    if rng.random() < 0.02:
        time.sleep(0.05)
with open(os.path.join(folder, "written.json"), "w") as summary:
    json.dump({name: digest.hexdigest() for name, digest in digests.items()}, summary)
"""


def bridge_database_url() -> str:
    if connection.vendor == "sqlite":
        return f"sqlite:///{connection.settings_dict['NAME']}"  # the test database is a file (SQLITE_TEST_NAME)
    return roles.database_url()


class AgentProcess:
    """``python -m aegis_agent`` with its own certificate, as an operator runs it."""

    def __init__(self, broker: Broker, folder: Path) -> None:  # noqa: F811
        credentials = broker.agent(AGENT_ID)
        self.log = folder / "agent.log"
        settings = {
            "agent_id": AGENT_ID,
            "host": "127.0.0.1",
            "port": broker.port,
            "tls_ca": str(credentials.ca),
            "tls_cert": str(credentials.cert),
            "tls_key": str(credentials.key),
            "shell_allow": [sys.executable],
            "heartbeat_interval_s": 1.0,
            "reconnect_min_s": 1,
            "reconnect_max_s": 2,
            # Small, so that the output printed while the broker is away overflows to the spool's file.
            "output_spool_memory_bytes": 2 * 1024 * 1024,
            "output_spool_dir": str(folder / "spool"),
            # The result keeps only a short tail: 64 KiB of raw bytes rendered as text would pass 256 KiB.
            "shell_max_output_bytes": 1024,
        }
        config = folder / "agent.json"
        config.write_text(json.dumps(settings))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aegis_agent", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def stack(broker: Broker, tmp_path: Path, transactional_db) -> Iterator[dict]:  # noqa: F811
    """The bridge and the agent as processes; both are ended (and their logs printed) before the database goes."""
    share_group = f"out{uuid.uuid4().hex[:8]}"
    started: dict = {"bridges": [], "agent": None}

    def bridge() -> BridgeProcess:
        number = len(started["bridges"]) + 1
        process = BridgeProcess(
            broker,
            "aegis-bridge-output",
            share_group,
            tmp_path / f"bridge{number}.log",
            DATABASE_URL=bridge_database_url(),
        )
        started["bridges"].append(process)
        return process

    started["bridge"] = bridge
    try:
        yield started
    finally:
        if started["agent"] is not None:
            started["agent"].stop()
            print(f"--- agent log ---\n{started['agent'].log_text()[-20_000:]}")
        for number, process in enumerate(started["bridges"], 1):
            process.kill()
            print(f"--- bridge {number} log ---\n{process.log_text()[-10_000:]}")


def stored_bytes(task: Task) -> int:
    summary = TaskLogAttempt.objects.filter(task=task, attempt=task.attempt).first()
    return summary.bytes if summary else 0


def test_fifty_megabytes_of_shell_output_arrive_complete_in_order_and_once_across_a_bridge_kill_and_a_broker_restart(
    broker: Broker,  # noqa: F811
    stack,
    tmp_path: Path,
    spec,
    operator,
):
    first_bridge = stack["bridge"]()
    first_bridge.wait_connected(broker)
    agent = stack["agent"] = AgentProcess(broker, tmp_path)

    def registered() -> bool:
        found = Agent.objects.filter(pk=AGENT_ID, connectivity=Connectivity.ONLINE).first()
        return found is not None and "shell" in found.capabilities

    wait_for(registered, "the agent's hello stored", timeout=WAIT_S)
    gates = tmp_path / "gates"
    gates.mkdir()
    argv = [sys.executable, "-c", SCRIPT, str(gates), str(TOTAL_BYTES)]
    job, _ = actions.submit_job(
        spec(kind="shell", target_agent_ids=[AGENT_ID], payload={"argv": argv}, execution_timeout_s=600), operator
    )
    assert Dispatcher().assign()
    task = Task.objects.get(job=job)

    # A third in, the script waits: kill the bridge while output is in flight, let the script go on, start another.
    wait_for(lambda: stored_bytes(task) >= 4_000_000, "some output stored", timeout=WAIT_S)
    first_bridge.kill()
    (gates / "gate1").touch()
    second_bridge = stack["bridge"]()
    second_bridge.wait_connected(broker)

    # Two thirds in: stop the broker, let the script print the rest into the agent's spool, start the broker again.
    # Stopped once what was printed so far is stored: Mosquitto 2.0.11 may lose, across its restart, messages it
    # had PUBACKed to the agent and not yet delivered (aegis_agent/tests/test_output_broker.py); the agent's
    # part, holding and sending again what the broker did not acknowledge, is what this step checks.
    at_gate2 = gates / "at_gate2"
    wait_for(at_gate2.exists, "the script at two thirds", timeout=WAIT_S)
    wait_for(lambda: stored_bytes(task) >= int(at_gate2.read_text()), "two thirds stored", timeout=WAIT_S)
    broker.stop()
    (gates / "gate2").touch()
    wait_for(lambda: (gates / "written.json").exists(), "the script to print everything", timeout=WAIT_S)
    broker.start()

    def finished() -> bool:
        summary = TaskLogAttempt.objects.filter(task=task, attempt=task.attempt).first()
        done = Task.objects.filter(pk=task.pk, state=TaskState.SUCCEEDED).exists()
        return done and summary is not None and summary.chunks == summary.max_seq and summary.bytes >= TOTAL_BYTES

    wait_for(finished, "the task succeeded and all of its output stored", timeout=WAIT_S, interval=0.25)
    log = agent.log_text()
    assert "reconnecting" in log  # the agent lost its broker and came back
    assert "overflowing to" in log  # and its spool used the overflow file meanwhile

    summary = TaskLogAttempt.objects.get(task=task, attempt=task.attempt)
    chunks = TaskLogChunk.objects.filter(task=task, attempt=task.attempt).order_by("seq")
    seqs = list(chunks.values_list("seq", flat=True))
    assert seqs == list(range(1, summary.max_seq + 1))  # gap-free; (task, attempt, seq) is unique: none doubled
    digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256(), "system": hashlib.sha256()}
    total = 0
    for stream, data in chunks.values_list("stream", "data").iterator(chunk_size=200):
        digests[stream].update(bytes(data))
        total += len(data)
    expected = json.loads((gates / "written.json").read_text())
    assert {name: digests[name].hexdigest() for name in expected} == expected
    assert digests["system"].hexdigest() == hashlib.sha256().hexdigest()  # no "spool full" marker: nothing lost
    assert (total, summary.bytes, summary.truncated_at, summary.dropped) == (TOTAL_BYTES, TOTAL_BYTES, None, 0)
