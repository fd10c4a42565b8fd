"""The dispatcher role: its steps, called directly, and the process stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.models import OutboxMessage
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Task, TaskState

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.django_db
def test_assign_step_pushes_tasks_to_online_agents_through_the_outbox(make_agent, spec, operator, frozen_clock):
    make_agent("online-1", max_concurrency=2)
    make_agent("offline-1", online=False)
    actions.submit_job(spec(mode="each"), operator)
    actions.submit_job(spec(mode="any", task_count=3), operator)

    assert Dispatcher(batch_size=10).assign() is True

    held = Task.objects.filter(state=TaskState.ASSIGNED)
    assert set(held.values_list("agent_id", flat=True)) == {"online-1"}
    assert held.count() == 2  # the agent's capacity
    messages = OutboxMessage.objects.filter(agent_id="online-1", message_type="task.assign")
    assert sorted(m.payload["task"]["id"] for m in messages) == sorted(held.values_list("pk", flat=True))
    assert all(m.topic == "aegis/agents/online-1/inbox" and m.payload["v"] == 1 for m in messages)
    assert Task.objects.filter(agent_id="offline-1", state=TaskState.QUEUED).count() == 1


@pytest.mark.django_db
def test_expire_step_requeues_tasks_whose_delivery_lease_ran_out(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(delivery_timeout_s=30), operator)
    dispatcher = Dispatcher(batch_size=10)
    dispatcher.assign()
    assert dispatcher.expire_leases() is False
    frozen_clock.advance(31)
    assert dispatcher.expire_leases() is True
    task = Task.objects.get()
    assert task.state == TaskState.QUEUED
    assert task.error["code"] == "delivery_timeout"


@pytest.mark.django_db
def test_silent_agents_go_offline_after_missed_heartbeats(make_agent, frozen_clock, settings):
    settings.AGENT_HEARTBEAT_INTERVAL = 10
    settings.AGENT_OFFLINE_AFTER_MISSED = 3
    make_agent("quiet")
    dispatcher = Dispatcher()
    frozen_clock.advance(29)
    assert dispatcher.mark_silent_agents_offline() is False
    frozen_clock.advance(2)
    assert dispatcher.mark_silent_agents_offline() is True
    agent = Agent.objects.get(pk="quiet")
    assert agent.connectivity == Connectivity.OFFLINE
    assert agent.disconnect_reason == "heartbeat timeout"


@pytest.mark.django_db
def test_step_reports_no_work_when_idle(make_agent, frozen_clock):
    make_agent("idle")
    assert Dispatcher().step() is False


@pytest.mark.django_db(transaction=True)
def test_run_dispatcher_command_stops_cleanly_on_sigterm(tmp_path):
    environment = {**os.environ, "DISPATCHER_POLL_INTERVAL": "0.2"}
    if "DATABASE_URL" not in os.environ:
        environment["DATA_DIR"] = str(tmp_path)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=environment, check=True)
    else:
        from django.db import connection

        environment["DATABASE_URL"] = (
            os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
        )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_dispatcher"], cwd=ROOT, env=environment, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while "dispatcher started" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert "dispatcher started" in seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "dispatcher stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_submitting_a_job_wakes_a_waiting_dispatcher_through_notify(spec, operator, make_agent):
    import threading

    make_agent("a1")
    make_agent("a2")
    from aegis_site.core.wakeup import Listener

    listener = Listener()
    stop = threading.Event()
    woke: list[set[str] | None] = []
    try:
        listener.wait(0.01, stop)  # connects and LISTENs
        waiter = threading.Thread(target=lambda: woke.append(listener.wait(60, stop)))
        waiter.start()
        actions.submit_job(spec(mode="any", task_count=1), operator)
        waiter.join(90)
        assert woke == [set()]  # a NOTIFY (no agent named for an 'any' job), not the 60 s timeout
        waiter = threading.Thread(target=lambda: woke.append(listener.wait(60, stop)))
        waiter.start()
        actions.submit_job(spec(mode="each", target_agent_ids=["a1", "a2"]), operator)
        waiter.join(90)
        assert woke[1] == {"a1", "a2"}  # pinned tasks name their agents: the dispatcher claims for them first
    finally:
        listener.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_waiting_dispatcher_times_out_without_notify():
    import threading

    from aegis_site.core.wakeup import Listener

    listener = Listener()
    try:
        assert listener.wait(0.2, threading.Event()) is None
    finally:
        listener.close()


@pytest.mark.django_db
def test_one_pass_serves_every_agent_with_pinned_work_however_deep_one_queue_is(make_agent, spec, operator):
    make_agent("busy", max_concurrency=1)
    make_agent("other", max_concurrency=1)
    actions.submit_job(spec(mode="each", target_agent_ids=["other"]), operator)
    for _ in range(6):  # a deeper, newer queue for "busy" must not hide "other"
        actions.submit_job(spec(mode="each", target_agent_ids=["busy"]), operator)

    Dispatcher(batch_size=2).assign()

    assert set(Task.objects.filter(state=TaskState.ASSIGNED).values_list("agent_id", flat=True)) == {"busy", "other"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_work_that_comes_due_without_a_commit_is_announced_once(spec, operator, frozen_clock):
    """A job's start time passing commits nothing; the dispatcher's pass NOTIFYs for it, so the HTTP agents'
    waiting claims (tasks.engine.longpoll) need not look again on their own every few seconds."""
    import threading
    from datetime import timedelta

    from aegis_site.core.wakeup import Listener

    actions.submit_job(spec(mode="any", task_count=1, not_before=frozen_clock() + timedelta(seconds=10)), operator)
    dispatcher = Dispatcher()
    listener = Listener()
    stop = threading.Event()
    try:
        listener.wait(0.01, stop)  # connects and LISTENs (after the submit's own NOTIFY)
        dispatcher.announce_due()  # the first window starts here
        frozen_clock.advance(5)
        dispatcher.announce_due()
        assert listener.wait(0.5, stop) is None  # not due yet: nothing said
        frozen_clock.advance(6)
        dispatcher.announce_due()
        assert listener.wait(30, stop) == set()  # came due in this window: a general NOTIFY
        frozen_clock.advance(1)
        dispatcher.announce_due()
        assert listener.wait(0.5, stop) is None  # said once, not on every pass
    finally:
        listener.close()
