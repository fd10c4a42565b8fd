"""Task output through a real Mosquitto that stops while a shell task prints: the agent keeps what was not
acknowledged, reconnects, and every seq arrives (sha256 of each stream equal to what the script printed).

A Mosquitto of this test's own (the shared one at 1883 must not restart under other tests), plain TCP.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aegis_agent.agent import Agent
from aegis_agent.config import AgentConfig
from aegis_agent.tests.conftest import WAIT_S, assign, unique_id

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TOTAL_BYTES = 3_000_000

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")

# Prints TOTAL bytes (stdout text, stderr raw bytes), stops halfway (at_gate) until the gate file exists, then writes
# the sha256 of each stream to written.json.
SCRIPT = r"""
import hashlib, json, os, random, sys, time
folder, total = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
written, gated = 0, False
while written < total:
    if not gated and written >= total // 2:
        open(os.path.join(folder, "at_gate"), "w").close()
        while not os.path.exists(os.path.join(folder, "gate")):
            time.sleep(0.02)
        gated = True
    size = min(total - written, rng.choice([1, 50, 3000, 20000, 70000]))
    if rng.random() < 0.5:
        name, block = "stdout", ("line %d\n" % written).encode()[:size].ljust(size, b"-")
    else:
        name, block = "stderr", rng.randbytes(size)
    getattr(sys, name).buffer.write(block)
    getattr(sys, name).buffer.flush()
    digests[name].update(block)
    written += size
with open(os.path.join(folder, "written.json"), "w") as summary:
    json.dump({name: digest.hexdigest() for name, digest in digests.items()}, summary)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnBroker:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        folder.mkdir()
        self.conf = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {folder}/",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to "mosquitto", who cannot write tmp_path
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class LogReader:
    """Plays the bridge: subscribes to the agent's topics again after every reconnect, keeps every chunk."""

    def __init__(self, port: int, agent_id: str) -> None:
        self.agent_id = agent_id
        self.chunks: dict[int, tuple[str, bytes]] = {}
        self.conflicts: list[int] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("reader"), protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_a: c.subscribe(f"aegis/agents/{agent_id}/#", qos=1)
        self.client.on_message = self._on_message
        # A persistent session, as the bridge's: what the broker acknowledged to the agent but had not delivered
        # yet is kept (and saved by Mosquitto on its way down), not lost with the connection.
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if body.get("type") != "task.log":
                self.events.append(body)
                return
            data = body["data"].encode() if body.get("encoding") != "base64" else base64.b64decode(body["data"])
            chunk = (body["stream"], data)
            if self.chunks.setdefault(body["seq"], chunk) != chunk:
                self.conflicts.append(body["seq"])

    def digests(self) -> dict[str, str]:
        with self._lock:
            chunks = dict(self.chunks)
        digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
        for seq in sorted(chunks):
            stream, data = chunks[seq]
            digests[stream].update(data)
        return {name: digest.hexdigest() for name, digest in digests.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "mq")
    broker.start()
    yield broker
    broker.stop()


def contiguous(reader: LogReader) -> bool:
    seqs = sorted(reader.chunks)
    return bool(seqs) and seqs == list(range(1, seqs[-1] + 1))


def wait_for(condition: Any, what: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)
    return value


def test_output_printed_while_the_broker_is_down_arrives_complete_after_the_reconnect(own_broker, tmp_path):
    agent_id = unique_id("agent")
    reader = LogReader(own_broker.port, agent_id)
    config = AgentConfig(
        agent_id=agent_id,
        host="127.0.0.1",
        port=own_broker.port,
        shell_allow=[sys.executable],
        reconnect_min_s=1,
        reconnect_max_s=1,
        output_spool_memory_bytes=256 * 1024,  # small: the outage's output overflows to the file
        output_spool_dir=str(tmp_path / "spool"),
        shell_max_output_bytes=1024,
    )
    agent = Agent(config)
    agent.start()
    try:
        assert agent.wait_connected(WAIT_S)
        wait_for(lambda: any(e.get("type") == "hello" for e in reader.events), "the hello")
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("srv"), protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", own_broker.port)
        publisher.loop_start()
        argv = [sys.executable, "-c", SCRIPT, str(tmp_path), str(TOTAL_BYTES)]
        publisher.publish(f"aegis/agents/{agent_id}/inbox", assign(1, "shell", {"argv": argv}), qos=1).wait_for_publish(
            WAIT_S
        )
        publisher.disconnect()
        publisher.loop_stop()

        # Stopped while nothing is in flight. Stopped mid-flow, a block about the size of the reader's in-flight
        # window went missing after the restart although the broker had PUBACKed every one of them to the agent:
        # Mosquitto's loss (2.0.11), not the agent's, and not what this test is about.
        wait_for(lambda: (tmp_path / "at_gate").exists(), "the script halfway")
        wait_for(lambda: agent.output_spool.pending() == 0 and contiguous(reader), "the first half read")
        own_broker.stop()
        (tmp_path / "gate").touch()
        wait_for(lambda: (tmp_path / "written.json").exists(), "the script to finish while the broker is down")
        assert agent.output_spool.pending() > 0  # held by the agent, not lost
        own_broker.start()

        expected = json.loads((tmp_path / "written.json").read_text())
        wait_for(
            lambda: reader.digests() == expected,
            lambda: f"every chunk after the reconnect: {len(reader.chunks)} of {max(reader.chunks)}",
        )
        assert sorted(reader.chunks) == list(range(1, max(reader.chunks) + 1))
        assert reader.conflicts == []  # a seq received twice carried the same bytes
        wait_for(lambda: agent.output_spool.pending() == 0, "every chunk acknowledged")
    finally:
        agent.stop(2)
        reader.close()
