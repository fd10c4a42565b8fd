"""Reconnects, the Last Will and a clean stop, against a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aegis_agent.tests.conftest import HOST, PORT, WAIT_S, assign

ROOT = Path(__file__).resolve().parents[2]


def kick_off(agent_id: str) -> None:
    """Take over the agent's client id (the broker drops the agent), then leave again."""
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_a: connected.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(HOST, PORT, clean_start=True, properties=properties)
    client.loop_start()
    assert connected.wait(WAIT_S)
    client.disconnect()
    client.loop_stop()


def test_agent_reconnects_says_hello_again_and_resubscribes(make_agent, peer, agent_id):
    make_agent(reconnect_min_s=1, reconnect_max_s=2)
    peer.on_topic(f"aegis/agents/{agent_id}/hello")
    kick_off(agent_id)  # its session is gone too: the agent must subscribe again
    peer.on_topic(f"aegis/agents/{agent_id}/status", state="offline")  # the Will of the dropped connection
    hellos = peer.on_topic(f"aegis/agents/{agent_id}/hello", count=2)
    assert hellos[1]["id"] != hellos[0]["id"]
    peer.on_topic(f"aegis/agents/{agent_id}/status", count=2, state="online")
    peer.send(agent_id, assign(1, "echo", {"after": "reconnect"}))
    assert peer.event(agent_id, "task.succeeded", 1)[0]["result"] == {"after": "reconnect"}


def test_hello_after_reconnect_lists_the_running_task(make_agent, peer, agent_id):
    make_agent(reconnect_min_s=1, reconnect_max_s=2)
    peer.send(agent_id, assign(2, "sleep", {"seconds": 4}))
    peer.event(agent_id, "task.accepted", 2)
    kick_off(agent_id)
    hello = peer.on_topic(f"aegis/agents/{agent_id}/hello", count=2)[1]
    assert hello["running"] == [{"task_id": 2, "attempt": 1}]


def _spawn_agent(tmp_path: Path, agent_id: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.toml"
    config.write_text(f'agent_id = "{agent_id}"\nhost = "{HOST}"\nport = {PORT}\nheartbeat_interval_s = 0.5\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "aegis_agent", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_last_will_marks_the_agent_offline_when_its_process_dies(tmp_path, peer, agent_id):
    process = _spawn_agent(tmp_path, agent_id)
    try:
        peer.on_topic(f"aegis/agents/{agent_id}/hello")
        process.kill()  # no DISCONNECT: the broker publishes the Will
        process.wait(WAIT_S)
        offline = peer.on_topic(f"aegis/agents/{agent_id}/status", state="offline")[0]
        assert offline["v"] == 1
        assert offline["type"] == "status"
    finally:
        process.kill()
        process.wait(WAIT_S)


def test_will_is_retained_for_late_subscribers(tmp_path, agent_id):
    from aegis_agent.tests.conftest import Peer

    process = _spawn_agent(tmp_path, agent_id)
    try:
        first = Peer(f"aegis/agents/{agent_id}/hello")
        first.on_topic(f"aegis/agents/{agent_id}/hello")
        first.close()
        process.kill()
        process.wait(WAIT_S)
        late = Peer(f"aegis/agents/{agent_id}/status")
        late.wait_for(lambda t, b: b.get("state") == "offline")
        assert any(retained for _t, _b, retained in late.messages)
        late.close()
    finally:
        process.kill()
        process.wait(WAIT_S)


def test_sigterm_publishes_offline_and_exits_cleanly(tmp_path, peer, agent_id):
    process = _spawn_agent(tmp_path, agent_id)
    try:
        peer.on_topic(f"aegis/agents/{agent_id}/hello")
        peer.send(agent_id, assign(3, "sleep", {"seconds": 30}))
        peer.event(agent_id, "task.accepted", 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0, process.stderr.read().decode() if process.stderr else ""
        failed = peer.event(agent_id, "task.failed", 3)[0]
        assert failed["error"]["code"] == "agent_shutdown"
        assert failed["retryable"] is True
        peer.on_topic(f"aegis/agents/{agent_id}/status", state="offline")
    finally:
        process.kill()
        process.wait(WAIT_S)


def test_bad_config_exits_with_a_clear_message(tmp_path):
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"agent_id": "Bad Id"}))
    result = subprocess.run(
        [sys.executable, "-m", "aegis_agent", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 2
    assert b"configuration error: agent_id 'Bad Id' must match" in result.stderr
