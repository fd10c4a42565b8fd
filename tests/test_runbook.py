"""The operations docs run as written (issue 14 item 6).

Every shell block of docs/operations.md and docs/ops-*.md is marked runnable or not-run (tests/runbook.py says
how); the runnable ones run, in document order, against a scratch stack this test starts: its own PostgreSQL
database, Redis, Mosquitto from the configuration ``setup_broker`` generates (TLS), and the production roles as
processes (daphne, bridge, dispatcher) with production defaults. Before the blocks run, the test produces what
the log queries look for: a slow request, failed authentications, a rate limit, a task's transitions and a
dropped MQTT message.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.fernet import Fernet

from aegis_agent.agent import Agent as ReferenceAgent
from aegis_agent.config import AgentConfig
from broker.mosquitto import BrokerLayout
from broker.protocol import agent_topic
from registry.pki import crypto
from tests import runbook
from tests.roles import Roles, request, role_env
from tests.support import free_port, wait_for

AGENT_ID = "runbook-agent"
NOISY_AGENT_ID = "runbook-noise"


def test_every_shell_block_is_marked_runnable_or_not_run() -> None:
    """A new block must say whether it runs here; a not-run block must say why."""
    blocks = runbook.shell_blocks()
    assert blocks, "no shell blocks found"
    unmarked = [block.where for block in blocks if not block.kind]
    assert not unmarked, f"shell blocks with neither <!-- runnable --> nor <!-- not-run: why -->: {unmarked}"
    unexplained = [block.where for block in blocks if block.kind == "not-run" and not block.detail]
    assert not unexplained, f"not-run blocks without a reason: {unexplained}"
    unknown = [block.where for block in blocks if block.kind == "runnable" and block.detail not in ("", "log-query")]
    assert not unknown, f"runnable blocks with an unknown option: {unknown}"


def test_every_placeholder_is_used() -> None:
    """The mapping names only text the runnable blocks hold, so it cannot hide a stale substitution."""
    texts = "".join(block.text for block in runbook.shell_blocks() if block.kind == "runnable")
    assert [placeholder for placeholder in runbook.PLACEHOLDERS if placeholder not in texts] == []


@dataclass
class Stack:
    env: dict[str, str]
    roles: Roles
    layout: BrokerLayout
    mqtt_port: int
    scratch: Path


def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    # The test stands in for nginx: TLS ends there and it tells daphne so (TRUSTED_PROXIES below).
    return request(url, method, "", body, extra_headers={"X-Forwarded-Proto": "https", **(headers or {})})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    scratch = tmp_path
    data_dir = scratch / "data"
    data_dir.mkdir()
    (scratch / "backups").mkdir()
    (scratch / "b").mkdir()
    database = runbook.ScratchDatabase(os.environ["DATABASE_URL"])
    database.create()
    broker_dir = scratch / "broker"
    mqtt_port = free_port()
    layout = BrokerLayout(broker_dir)
    stack_settings = {
        "DATABASE_URL": database.url,
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "BROKER_DIR": str(broker_dir),
        "MQTT_URL": f"mqtts://127.0.0.1:{mqtt_port}",
        "MQTT_CA_FILE": str(layout.ca_cert),
        "MQTT_CERT_FILE": str(layout.bridge_cert),
        "MQTT_KEY_FILE": str(layout.bridge_key),
        "MQTT_CLIENT_ID": f"aegis-bridge-runbook-{uuid.uuid4().hex[:6]}",
        "LOG_FORMAT": "json",  # the production default (tests/roles.py picks plain for its readers)
        "HTTPS_ONLY": "1",  # the production default with DEBUG=0 (tests/roles.py turns it off)
        "TRUSTED_PROXIES": "127.0.0.1/32",  # the test's own requests come "through nginx" (see call())
        "SLOW_REQUEST_MS": "1",  # every request is a slow request: the slow_request query has lines to find
        "METRICS_TOKEN": "runbook-" + uuid.uuid4().hex,
        "BACKUP_DIR": str(scratch / "backups"),
        "BACKUP_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    env = role_env(data_dir, **stack_settings)
    mosquitto = None
    roles = Roles(data_dir)
    try:
        run_as = ["--user", "root"] if os.geteuid() == 0 else []
        runbook.manage(
            env, "setup_broker", "--dir", str(broker_dir), "--port", str(mqtt_port), "--log-file",
            str(scratch / "mosquitto.log"), *run_as,
        )  # fmt: skip
        mosquitto = runbook.SupervisedMosquitto(layout.conf, scratch)
        runbook.manage(env, "migrate", "--noinput")
        runbook.manage(
            env | {"DJANGO_SUPERUSER_PASSWORD": "runbook-password-1"},
            "createsuperuser", "--noinput", "--username", "runbook", "--email", "runbook@example.org",
        )  # fmt: skip
        roles.web(**stack_settings)
        roles.start("bridge", [sys.executable, "manage.py", "run_bridge"], **stack_settings)
        roles.start("dispatcher", [sys.executable, "manage.py", "run_dispatcher"], **stack_settings)
        yield Stack(env, roles, layout, mqtt_port, scratch)
    finally:
        roles.stop()
        if mosquitto is not None:
            mosquitto.stop()
        database.drop()


def agent_credentials(stack: Stack, agent_id: str) -> tuple[Path, Path]:
    """A certificate from the stack's CA, written outside the broker directory (no issued/ record, so the
    CA rotation the docs run later does not count it as an agent still on the old CA)."""
    issued = crypto.issue_agent_cert(crypto.load_issued(stack.layout.ca_cert, stack.layout.ca_key), agent_id)
    cert, key = stack.scratch / "agents" / f"{agent_id}.crt", stack.scratch / "agents" / f"{agent_id}.key"
    crypto.write_issued(issued, cert, key)
    return cert, key


def produce_events(stack: Stack) -> dict[str, str]:
    """What the docs' log queries look for; returns the ids the placeholders stand for."""
    web = stack.roles.web_url
    api = web + "/api/v1"
    status, tokens = call(api + "/auth/token/", "POST", {"username": "runbook", "password": "runbook-password-1"})
    assert status == 200, tokens
    operator = {"Authorization": f"Bearer {tokens['access']}"}

    request_id = "runbook-" + uuid.uuid4().hex
    assert call(api + "/jobs/", headers=operator | {"X-Request-ID": request_id})[0] == 200  # a slow request

    # Failed token authentications (auth_failed) until the per-address limit answers 429 (rate_limit).
    # From another client address (forwarded by the trusted proxy): the limit would refuse the operator too.
    flood = {"Authorization": "Bearer aeo_not-a-token", "X-Forwarded-For": "203.0.113.7"}
    statuses = [call(api + "/jobs/", headers=flood)[0] for _ in range(25)]
    assert 401 in statuses, statuses
    assert 429 in statuses, statuses

    runbook.wait_for_text(stack.roles.data_dir / "bridge.log", "bridge connected", timeout=90)
    cert, key = agent_credentials(stack, AGENT_ID)
    agent = ReferenceAgent(
        AgentConfig(
            agent_id=AGENT_ID,
            port=stack.mqtt_port,
            tls_ca=str(stack.layout.ca_cert),
            tls_cert=str(cert),
            tls_key=str(key),
            heartbeat_interval_s=1.0,
        )
    )
    agent.start()
    try:
        assert agent.wait_connected(15)
        wait_for(
            lambda: call(f"{api}/agents/{AGENT_ID}/", headers=operator)[1].get("connectivity") == "online",
            "the agent's hello stored",
            timeout=20,
        )
        status, job = call(
            api + "/jobs/", "POST", {"kind": "echo", "target_agent_ids": [AGENT_ID], "payload": {"n": 1}}, operator
        )
        assert status == 201, job
        wait_for(
            lambda: call(f"{api}/jobs/{job['id']}/", headers=operator)[1].get("state") == "succeeded",
            "the job succeeded",
            timeout=30,
        )
    finally:
        agent.stop(2)
    tasks = call(f"{api}/tasks/?job={job['id']}", headers=operator)[1]
    task_id = str(tasks["results"][0]["id"])

    # A malformed message from an agent's own topic: the bridge drops it and logs why.
    noise_cert, noise_key = agent_credentials(stack, NOISY_AGENT_ID)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=NOISY_AGENT_ID, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(stack.layout.ca_cert), certfile=str(noise_cert), keyfile=str(noise_key))
    client.connect("127.0.0.1", stack.mqtt_port)
    client.loop_start()
    try:
        client.publish(agent_topic(NOISY_AGENT_ID, "events"), b"not json", qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    runbook.wait_for_text(stack.roles.data_dir / "bridge.log", "mqtt message dropped")
    return {"RUNBOOK_REQUEST_ID": request_id, "RUNBOOK_TASK_ID": task_id}


@pytest.mark.postgres
def test_the_runbook_runs_as_written(stack: Stack) -> None:
    ids = produce_events(stack)
    bin_dir = str(Path(sys.executable).parent)
    env = stack.env | ids
    env |= {
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "RUNBOOK_ROOT": str(runbook.ROOT),
        "RUNBOOK_PYTHON": sys.executable,
        "RUNBOOK_WEB_URL": stack.roles.web_url,
        "RUNBOOK_LOGS": str(stack.roles.data_dir),
        "RUNBOOK_SCRATCH": str(stack.scratch),
        "RUNBOOK_MQTT_PORT": str(stack.mqtt_port),
        "RUNBOOK_MOSQUITTO_PID": str(stack.scratch / "mosquitto.pid"),
    }
    runner = runbook.Runner(env, stack.scratch)
    report = []
    for block in runbook.shell_blocks():
        if block.kind != "runnable":
            report.append(f"not-run  {block.where} ({block.detail})")
            continue
        outcomes = runner.run_block(block)
        report.append(f"{'passed' if all(o.passed for o in outcomes) else 'FAILED'}   {block.where}")
    print("\n".join(report))
    failures = [outcome.describe() for outcome in runner.outcomes if not outcome.passed]
    assert not failures, "\n\n".join(failures)
