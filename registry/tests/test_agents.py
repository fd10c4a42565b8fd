"""Agents: registration, admin state, presence, removal, and which ids are allowed."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions
from registry.models import AdminState, Agent, Connectivity, agent_id_validator
from tasks import actions as task_actions
from tasks.models import Task, TaskEvent, TaskEventKind, TaskState

pytestmark = pytest.mark.django_db


def audit_actions(agent_id: str) -> list[str]:
    events = AuditEvent.objects.filter(object_type="agent", object_id=agent_id).order_by("id")
    return list(events.values_list("action", flat=True))


def reload(agent: Agent) -> Agent:
    agent.refresh_from_db()
    return agent


# --- register_agent ---------------------------------------------------------------------


def test_register_creates_the_agent_with_the_given_fields(operator):
    agent, created = actions.register_agent(
        "node-1",
        operator,
        name="Node one",
        labels={"role": "web"},
        capabilities=["echo", "shell"],
        max_concurrency=3,
        version="1.2.0",
        metadata={"os": "linux"},
    )

    assert created is True
    stored = Agent.objects.get(pk="node-1")
    assert stored == agent
    assert (stored.name, stored.labels, stored.capabilities) == ("Node one", {"role": "web"}, ["echo", "shell"])
    assert (stored.max_concurrency, stored.version, stored.metadata) == (3, "1.2.0", {"os": "linux"})
    event = AuditEvent.objects.get(object_type="agent", object_id="node-1")
    assert (event.action, event.actor_label) == ("agent.register", "tester")
    assert event.data["labels"] == {"role": "web"}


def test_register_again_updates_the_given_fields_and_keeps_the_others(operator):
    actions.register_agent(
        "node-1", operator, name="Node one", labels={"role": "web"}, capabilities=["echo"], metadata={"os": "linux"}
    )

    agent, created = actions.register_agent("node-1", operator, version="2.0.0", labels={"role": "db"})

    assert created is False
    agent = reload(agent)
    assert agent.version == "2.0.0"
    assert agent.labels == {"role": "db"}
    assert (agent.name, agent.capabilities, agent.metadata) == ("Node one", ["echo"], {"os": "linux"})
    assert Agent.objects.count() == 1
    assert audit_actions("node-1") == ["agent.register", "agent.update"]


def test_register_again_without_max_concurrency_keeps_it(operator):
    actions.register_agent("node-1", operator, max_concurrency=8)

    actions.register_agent("node-1", operator, version="2.0.0")

    assert Agent.objects.get(pk="node-1").max_concurrency == 8


def test_register_does_not_touch_presence_or_admin_state(operator, make_agent):
    make_agent("node-1", online=True, admin_state=AdminState.DRAINING)

    actions.register_agent("node-1", operator, name="renamed")

    agent = Agent.objects.get(pk="node-1")
    assert (agent.name, agent.connectivity, agent.admin_state) == ("renamed", Connectivity.ONLINE, AdminState.DRAINING)


def test_new_matching_agent_gets_a_task_of_an_open_continuous_job(operator, spec):
    job, _ = task_actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)
    assert job.tasks_total == 0

    actions.register_agent("web-1", operator, labels={"role": "web"})
    actions.register_agent("db-1", operator, labels={"role": "db"})

    (task,) = Task.objects.filter(job=job)
    assert (task.agent_id, task.pinned, task.state) == ("web-1", True, TaskState.QUEUED)
    assert TaskEvent.objects.filter(task=task, kind=TaskEventKind.CREATED).count() == 1
    job.refresh_from_db()
    assert job.tasks_total == 1


def test_registering_again_does_not_add_a_second_task(operator, spec):
    job, _ = task_actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)
    actions.register_agent("web-1", operator, labels={"role": "web"})

    actions.register_agent("web-1", operator, labels={"role": "web"}, version="2")

    assert Task.objects.filter(job=job).count() == 1


def test_agent_relabelled_into_a_continuous_job_gets_a_task(operator, spec):
    actions.register_agent("node-1", operator, labels={"role": "db"})
    job, _ = task_actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)
    assert not Task.objects.filter(job=job).exists()

    actions.register_agent("node-1", operator, labels={"role": "web"})

    assert list(Task.objects.filter(job=job).values_list("agent_id", flat=True)) == ["node-1"]


def test_disabled_agent_gets_no_task_of_a_continuous_job(operator, spec, make_agent):
    make_agent("web-1", labels={"role": "web"}, admin_state=AdminState.DISABLED)
    job, _ = task_actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)

    actions.register_agent("web-1", operator, labels={"role": "web"}, version="2")

    assert not Task.objects.filter(job=job).exists()


def test_new_agent_gets_no_task_of_a_job_that_is_not_continuous(operator, spec):
    job, _ = task_actions.submit_job(spec(target_labels={"role": "web"}), operator)

    actions.register_agent("web-1", operator, labels={"role": "web"})

    assert not Task.objects.filter(job=job).exists()


def test_new_agent_gets_no_task_of_a_canceled_continuous_job(operator, spec):
    job, _ = task_actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)
    task_actions.cancel_job(job.pk, operator)

    actions.register_agent("web-1", operator, labels={"role": "web"})

    assert not Task.objects.filter(job=job).exists()


# --- set_admin_state --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "state", "action"),
    [
        (AdminState.ACTIVE, AdminState.DRAINING, "agent.drain"),
        (AdminState.ACTIVE, AdminState.DISABLED, "agent.disable"),
        (AdminState.DISABLED, AdminState.ACTIVE, "agent.enable"),
    ],
)
def test_set_admin_state_saves_the_state_and_audits_it(operator, make_agent, start, state, action):
    make_agent("node-1", admin_state=start)

    returned = actions.set_admin_state("node-1", state, operator)

    assert returned.admin_state == state
    assert Agent.objects.get(pk="node-1").admin_state == state
    event = AuditEvent.objects.get(object_type="agent", object_id="node-1")
    assert (event.action, event.actor_label, event.data) == (action, "tester", {"previous": start})


def test_drain_sends_one_drain_message_to_the_agent_inbox(operator, make_agent, frozen_clock):
    make_agent("node-1")

    actions.set_admin_state("node-1", AdminState.DRAINING, operator)

    (message,) = OutboxMessage.objects.all()
    assert (message.agent_id, message.topic, message.message_type) == (
        "node-1",
        "aegis/agents/node-1/inbox",
        "agent.drain",
    )
    assert message.sent_at is None
    payload = message.payload
    assert payload["v"] == 1
    assert payload["type"] == "agent.drain"
    assert payload["ts"] == frozen_clock().isoformat()
    assert re.fullmatch(r"[0-9a-f]{32}", payload["id"])


def test_draining_an_agent_that_already_drains_sends_nothing_more(operator, make_agent):
    make_agent("node-1")
    actions.set_admin_state("node-1", AdminState.DRAINING, operator)

    actions.set_admin_state("node-1", AdminState.DRAINING, operator)

    assert OutboxMessage.objects.count() == 1
    assert audit_actions("node-1") == ["agent.drain", "agent.drain"]


def test_disable_sends_no_message(operator, make_agent):
    make_agent("node-1", admin_state=AdminState.DRAINING)

    actions.set_admin_state("node-1", AdminState.DISABLED, operator)

    assert not OutboxMessage.objects.exists()


@pytest.mark.parametrize("start", [AdminState.DRAINING, AdminState.DISABLED])
def test_enable_tells_the_agent_to_take_work_again(operator, make_agent, start):
    make_agent("node-1", admin_state=start)

    actions.set_admin_state("node-1", AdminState.ACTIVE, operator)
    actions.set_admin_state("node-1", AdminState.ACTIVE, operator)  # already active: nothing more

    (message,) = OutboxMessage.objects.all()
    assert (message.topic, message.message_type, message.payload["type"]) == (
        "aegis/agents/node-1/inbox",
        "agent.resume",
        "agent.resume",
    )


def test_set_admin_state_of_an_unknown_agent_fails_and_records_nothing(operator, db):
    with pytest.raises(Agent.DoesNotExist):
        actions.set_admin_state("ghost", AdminState.DRAINING, operator)

    assert not AuditEvent.objects.exists()
    assert not OutboxMessage.objects.exists()


# --- presence ---------------------------------------------------------------------------


def test_mark_online_records_the_time_and_clears_the_disconnect_reason(make_agent, frozen_clock):
    make_agent("node-1", online=False, disconnect_reason="connection lost")
    seen = frozen_clock.advance(30)

    assert actions.mark_online("node-1") == 1

    agent = Agent.objects.get(pk="node-1")
    assert (agent.connectivity, agent.last_seen_at, agent.disconnect_reason) == (Connectivity.ONLINE, seen, "")


def test_mark_online_uses_the_given_time(make_agent, frozen_clock):
    make_agent("node-1", online=False)
    at = frozen_clock() - timedelta(seconds=5)

    actions.mark_online("node-1", at=at)

    assert Agent.objects.get(pk="node-1").last_seen_at == at


def test_mark_offline_stores_the_reason_cut_to_200_characters(make_agent, frozen_clock):
    make_agent("node-1")
    now = frozen_clock.advance(10)

    assert actions.mark_offline("node-1", "x" * 199 + "yz") == 1

    agent = Agent.objects.get(pk="node-1")
    assert agent.connectivity == Connectivity.OFFLINE
    assert agent.disconnect_reason == "x" * 199 + "y"
    assert agent.updated_at == now


def test_mark_offline_of_an_offline_agent_changes_nothing(make_agent, frozen_clock):
    make_agent("node-1")
    actions.mark_offline("node-1", "first")
    before = Agent.objects.get(pk="node-1")
    frozen_clock.advance(60)

    assert actions.mark_offline("node-1", "second") == 0

    after = Agent.objects.get(pk="node-1")
    assert (after.connectivity, after.disconnect_reason, after.updated_at) == (
        Connectivity.OFFLINE,
        "first",
        before.updated_at,
    )


def test_presence_of_an_unknown_agent_updates_nothing(db):
    assert actions.mark_online("ghost") == 0
    assert actions.mark_offline("ghost", "gone") == 0


def test_touch_agents_records_every_heartbeat_in_one_query(make_agent, frozen_clock, django_assert_num_queries):
    start = frozen_clock()
    for agent_id in ("a1", "a2", "a3", "a4"):
        make_agent(agent_id)
    seen = {"a1": start + timedelta(seconds=1), "a2": start + timedelta(seconds=2), "a3": start + timedelta(seconds=3)}

    # PostgreSQL's UPDATE ... RETURNING names the agents a heartbeat revives (agent.online notifications);
    # SQLite reads them first, in a second query.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 2):
        count = actions.touch_agents(seen)

    assert count == 3
    stored = dict(Agent.objects.values_list("id", "last_seen_at"))
    assert stored == {**seen, "a4": start}


def test_touch_agents_ignores_unknown_ids(make_agent, frozen_clock):
    make_agent("a1")
    later = frozen_clock.advance(5)

    assert actions.touch_agents({"a1": later, "ghost": later}) == 1

    assert Agent.objects.get(pk="a1").last_seen_at == later


def test_touch_agents_with_nothing_to_record_queries_nothing(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert actions.touch_agents({}) == 0


def test_silent_agents_go_offline_after_the_missed_heartbeats(make_agent, frozen_clock):
    start = frozen_clock()
    make_agent("silent")
    make_agent("never-seen")
    make_agent("already-offline", online=False, disconnect_reason="clean exit")
    make_agent("on-the-cutoff")
    make_agent("recent")
    Agent.objects.filter(pk="never-seen").update(last_seen_at=None)
    Agent.objects.filter(pk="on-the-cutoff").update(last_seen_at=start + timedelta(seconds=5))
    Agent.objects.filter(pk="recent").update(last_seen_at=start + timedelta(seconds=20))
    frozen_clock.advance(35)  # cutoff: 35 - 3 * 10 = start + 5 s

    assert actions.mark_silent_agents_offline(heartbeat_interval_s=10, missed=3) == 2

    state = {a.id: (a.connectivity, a.disconnect_reason) for a in Agent.objects.all()}
    assert state == {
        "silent": (Connectivity.OFFLINE, "heartbeat timeout"),
        "never-seen": (Connectivity.OFFLINE, "heartbeat timeout"),
        "already-offline": (Connectivity.OFFLINE, "clean exit"),
        "on-the-cutoff": (Connectivity.ONLINE, ""),
        "recent": (Connectivity.ONLINE, ""),
    }


def test_agents_heard_within_the_window_stay_online(make_agent, frozen_clock):
    make_agent("node-1")
    frozen_clock.advance(29)

    assert actions.mark_silent_agents_offline(heartbeat_interval_s=10, missed=3) == 0

    assert Agent.objects.get(pk="node-1").connectivity == Connectivity.ONLINE


# --- remove_agent -----------------------------------------------------------------------


def test_remove_agent_cancels_its_open_pinned_tasks_and_keeps_the_others(operator, make_agent, spec, frozen_clock):
    make_agent("a1")
    make_agent("a2")
    fleet_job, _ = task_actions.submit_job(spec(target_agent_ids=["a1", "a2"]), operator)
    (held,) = task_actions.claim_tasks("a1", 10)
    only_a1_job, _ = task_actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (queued,) = Task.objects.filter(job=only_a1_job)
    (other,) = Task.objects.filter(job=fleet_job, agent_id="a2")

    actions.remove_agent("a1", operator)

    assert not Agent.objects.filter(pk="a1").exists()
    for task_id in (held.task_id, queued.pk):
        task = Task.objects.get(pk=task_id)
        assert task.state == TaskState.CANCELED
        event = TaskEvent.objects.filter(task_id=task_id).latest("id")
        assert (event.kind, event.to_state, event.agent_id) == (TaskEventKind.CANCELED, TaskState.CANCELED, "a1")
        assert event.data["reason"] == "agent removed"
    other.refresh_from_db()
    assert (other.state, other.agent_id) == (TaskState.QUEUED, "a2")
    only_a1_job.refresh_from_db()
    assert (only_a1_job.state, only_a1_job.tasks_canceled) == ("canceled", 1)


def test_remove_agent_leaves_its_finished_tasks_alone(operator, make_agent, spec):
    make_agent("a1")
    job, _ = task_actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (task,) = Task.objects.filter(job=job)
    task_actions.cancel_task(task.pk, operator)
    events_before = TaskEvent.objects.filter(task=task).count()

    actions.remove_agent("a1", operator)

    assert TaskEvent.objects.filter(task=task).count() == events_before


def test_remove_agent_audits_the_removal(operator, make_agent):
    make_agent("a1", labels={"site": "eu"})

    actions.remove_agent("a1", operator)

    event = AuditEvent.objects.get(object_type="agent", object_id="a1")
    assert (event.action, event.actor_label, event.data) == ("agent.remove", "tester", {"labels": {"site": "eu"}})


def test_remove_unknown_agent_fails_and_records_nothing(operator, db):
    with pytest.raises(Agent.DoesNotExist):
        actions.remove_agent("ghost", operator)

    assert not AuditEvent.objects.exists()


# --- agent ids --------------------------------------------------------------------------

VALID_IDS = ["a", "7", "node-1.eu_west", "a" * 63]
INVALID_IDS = ["A", "Node", "-x", ".x", "_x", "", "a" * 64, "a/b", "a+b", "a b", "a#", "é"]


@pytest.mark.parametrize("agent_id", VALID_IDS)
def test_valid_agent_id_is_accepted(agent_id):
    agent_id_validator(agent_id)
    Agent(id=agent_id).full_clean()


@pytest.mark.parametrize("agent_id", INVALID_IDS)
def test_invalid_agent_id_is_rejected_by_the_validator(agent_id):
    with pytest.raises(ValidationError):
        agent_id_validator(agent_id)


@pytest.mark.parametrize("agent_id", INVALID_IDS)
def test_invalid_agent_id_is_rejected_by_full_clean(agent_id):
    with pytest.raises(ValidationError) as raised:
        Agent(id=agent_id).full_clean()

    assert "id" in raised.value.message_dict


def test_agent_id_with_a_trailing_newline_is_rejected():
    """A regex ending in ``$`` also matches before a final newline; an MQTT username must not carry one."""
    with pytest.raises(ValidationError):
        agent_id_validator("node-1\n")
    with pytest.raises(ValidationError):
        Agent(id="node-1\n").full_clean()


@pytest.mark.django_db
def test_remove_agent_sends_its_unpinned_tasks_back_to_the_queue(make_agent, spec, operator, frozen_clock):
    from tasks.dispatcher import Dispatcher
    from tasks.models import Task, TaskState

    make_agent("leaving")
    task_actions.submit_job(spec(mode="any", task_count=1), operator)
    task_actions.claim_tasks("leaving", 1)

    actions.remove_agent("leaving", operator)
    frozen_clock.advance(1)
    Dispatcher().expire_leases()

    task = Task.objects.get()
    assert task.state == TaskState.QUEUED
    assert task.agent_id is None


def test_a_heartbeat_brings_back_an_agent_the_silence_sweep_took_offline(make_agent, frozen_clock):
    make_agent("sleepy")
    make_agent("willed", online=False, disconnect_reason="connection lost")
    Agent.objects.filter(pk="sleepy").update(connectivity=Connectivity.OFFLINE, disconnect_reason="heartbeat timeout")
    now = frozen_clock.advance(1)

    assert actions.touch_agents({"sleepy": now, "willed": now}) == 2

    state = {a.id: (a.connectivity, a.disconnect_reason, a.last_seen_at) for a in Agent.objects.all()}
    assert state["sleepy"] == (Connectivity.ONLINE, "", now)
    assert state["willed"] == (Connectivity.OFFLINE, "connection lost", now)


def test_a_revival_moves_updated_at_and_a_plain_heartbeat_does_not(make_agent, frozen_clock):
    """The admin's live feed watches agents.updated_at: a revival is news, a heartbeat is not."""
    make_agent("sleepy")
    make_agent("awake")
    Agent.objects.filter(pk="sleepy").update(connectivity=Connectivity.OFFLINE, disconnect_reason="heartbeat timeout")
    before = dict(Agent.objects.values_list("id", "updated_at"))
    now = frozen_clock.advance(30)

    actions.touch_agents({"sleepy": now, "awake": now})

    after = dict(Agent.objects.values_list("id", "updated_at"))
    assert after["sleepy"] == now
    assert after["awake"] == before["awake"]


def test_mark_online_moves_updated_at(make_agent, frozen_clock):
    make_agent("returning", online=False)
    now = frozen_clock.advance(30)

    actions.mark_online("returning")

    assert Agent.objects.get(pk="returning").updated_at == now
