"""A role that cannot do its job exits non-zero, and the bridge never acknowledges what it did not apply.

The bridge tests run against the machine's Mosquitto (127.0.0.1:1883, MQTT 5, a
persistent session); the process test runs ``manage.py run_dispatcher`` with the
production defaults (the PostgreSQL pool on) and breaks its database under it.
``ROLE_MAX_FAILED_STEPS`` is lowered to 3 in these tests only so that giving up
takes about a second instead of about 75.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection

from aegis_site.core.models import RoleHeartbeat
from aegis_site.core.roles import RoleFailed
from broker.bridge import Bridge
from registry.models import Agent
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, Task
from tests.support import envelope, mqtt_dropped, wait_for
from tests.test_bridge import FakeAgent, broker_reachable

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.django_db(transaction=True)
needs_broker = pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883")


def _bridge(client_id: str) -> Bridge:
    bridge = Bridge("mqtt://127.0.0.1:1883", client_id=client_id)
    bridge.start()
    assert bridge.connected.wait(10), "bridge did not connect"
    # A hello published before the SUBACK reaches no subscriber and is gone (FakeAgent does not re-send).
    assert bridge.subscribed.wait(10), "bridge did not subscribe"
    return bridge


@pytest.fixture
def bridge_settings(settings) -> Any:
    settings.MQTT_SHARE_GROUP = f"test{uuid.uuid4().hex[:8]}"
    settings.BRIDGE_OUTBOX_POLL_INTERVAL = 0.05
    settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL = 0.1
    settings.ROLE_MAX_FAILED_STEPS = 3  # give up after ~0.7 s of backoff instead of ~75 s
    return settings


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    yield fake
    fake.close()


def _running_task(bridge: Bridge, agent: FakeAgent, spec: Any, operator: Any) -> tuple[Job, dict[str, Any]]:
    agent.hello()
    wait_for(lambda: Agent.objects.filter(pk=agent.id).exists(), what="hello")
    job, _ = actions.submit_job(spec(target_agent_ids=[agent.id]), operator)
    Dispatcher().assign()
    assignment = agent.next_message()
    assert assignment["type"] == "task.assign"
    task = assignment["task"]
    agent.send("events", envelope("task.accepted", task_id=task["id"], attempt=1))
    wait_for(lambda: Task.objects.get(pk=task["id"]).state == "running", what="task running")
    return job, task


def _failing_reports(monkeypatch: Any, failures: int | None) -> list[int]:
    """Reports that carry a result raise a plain bug (not a DatabaseError) ``failures`` times (None: always)."""
    real = actions.apply_agents_reports
    calls: list[int] = []

    def flaky(reports: Any) -> Any:
        if any(report.kind == "succeeded" for _agent, report in reports):
            calls.append(1)
            if failures is None or len(calls) <= failures:
                raise RuntimeError("a bug met while applying a result")
        return real(reports)

    monkeypatch.setattr(actions, "apply_agents_reports", flaky)
    return calls


@needs_broker
def test_a_result_that_met_a_bug_is_retried_not_dropped(bridge_settings, agent, spec, operator, monkeypatch):
    bridge = _bridge(f"bridge-{uuid.uuid4().hex[:8]}")
    try:
        job, task = _running_task(bridge, agent, spec, operator)
        calls = _failing_reports(monkeypatch, failures=2)
        dropped_before = mqtt_dropped()
        agent.send("events", envelope("task.succeeded", task_id=task["id"], attempt=1, result={"ok": True}))
        wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", what="the result applied after the bug")
        # Two failures, then the same batch again. On a loaded machine the broker may also redeliver the
        # message after a reconnect: that copy comes as a duplicate (applied once, dropped as "duplicate").
        assert len(calls) >= 3
        dropped = {reason: n - dropped_before.get(reason, 0) for reason, n in mqtt_dropped().items()}
        assert {reason for reason, n in dropped.items() if n} <= {"duplicate"}  # never the result itself
        assert Task.objects.get(pk=task["id"]).result == {"ok": True}
        assert bridge.exit_code == 0
    finally:
        bridge.shutdown()


@needs_broker
def test_a_bridge_failing_every_batch_exits_and_its_successor_applies_the_batch(
    bridge_settings, agent, spec, operator, monkeypatch
):
    client_id = f"bridge-{uuid.uuid4().hex[:8]}"
    first = _bridge(client_id)
    job, task = _running_task(first, agent, spec, operator)
    _failing_reports(monkeypatch, failures=None)
    runner = threading.Thread(target=lambda: setattr(first, "result", first.run()), daemon=True)
    runner.start()  # run() returns once a thread gave up
    agent.send("events", envelope("task.succeeded", task_id=task["id"], attempt=1, result={"ok": True}))
    runner.join(60)
    assert not runner.is_alive(), "the bridge kept running while every batch failed"
    assert first.result == 1
    assert Task.objects.get(pk=task["id"]).state == "running"  # not applied, and not acknowledged either

    monkeypatch.undo()
    successor = _bridge(client_id)  # the same session: the broker redelivers what was never acknowledged
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", what="the successor applied the result")
    finally:
        successor.shutdown()


def test_a_dispatcher_failing_every_step_stops_beating_and_gives_up(settings, monkeypatch):
    settings.ROLE_MAX_FAILED_STEPS = 3
    settings.DISPATCHER_PUBLISH = False

    def broken(self: Dispatcher) -> bool:
        raise DatabaseError("relation does not exist")

    monkeypatch.setattr(Dispatcher, "assign", broken)
    dispatcher = Dispatcher(poll_interval=0.05)
    with pytest.raises(RoleFailed, match="failed 3 times in a row"):
        dispatcher.run()
    assert not RoleHeartbeat.objects.filter(role="dispatcher").exists()


def test_a_failed_step_is_forgiven_after_a_success(settings, monkeypatch):
    settings.ROLE_MAX_FAILED_STEPS = 3
    settings.DISPATCHER_PUBLISH = False
    dispatcher = Dispatcher(poll_interval=0.05)
    outcomes = iter([False, False, True, False, False, True, False, False])

    def sometimes(self: Dispatcher) -> bool:
        if next(outcomes, True):
            return False
        raise DatabaseError("connection reset")

    monkeypatch.setattr(Dispatcher, "assign", sometimes)
    stopper = threading.Timer(3.0, dispatcher.stop.set)
    stopper.start()
    dispatcher.run()  # two failures in a row at most: never gives up
    stopper.cancel()
    assert RoleHeartbeat.objects.filter(role="dispatcher").exists()


@pytest.mark.postgres
def test_the_dispatcher_process_exits_non_zero_when_its_database_breaks(tmp_path):
    """The production command with the default pool; the ``tasks`` table disappears under it."""
    db = connection.settings_dict
    host = f"{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
    url = f"postgres://{db.get('USER') or 'postgres'}@{host}/{db['NAME']}"
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "MQTT_URL", "DB_POOL_SIZE"}}
    env.update(DATABASE_URL=url, ROLE_MAX_FAILED_STEPS="3", DISPATCHER_PUBLISH="false")
    log = tmp_path / "dispatcher.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_dispatcher", "--poll-interval", "0.1"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: RoleHeartbeat.objects.filter(role="dispatcher").exists(), "first heartbeat", timeout=60)
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE tasks RENAME TO tasks_away")
        try:
            wait_for(lambda: process.poll() is not None, "the dispatcher to exit", timeout=120)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE tasks_away RENAME TO tasks")
        assert process.returncode == 1, log.read_text()
        assert "failed 3 times in a row" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_broker
def test_a_bridge_whose_heartbeat_flush_keeps_failing_writes_no_role_heartbeat_and_exits(bridge_settings, monkeypatch):
    from broker.presence import HeartbeatBuffer

    def broken(self: HeartbeatBuffer) -> None:
        raise DatabaseError("server closed the connection unexpectedly")

    monkeypatch.setattr(HeartbeatBuffer, "flush", broken)
    bridge = Bridge("mqtt://127.0.0.1:1883", client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(bridge.run()), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the bridge kept running while every flush failed"
    assert outcome == [1]
    assert bridge.flushing.count >= 3
    assert not RoleHeartbeat.objects.filter(role="bridge").exists()  # /healthz/comprehensive: bridge stale
