"""The tasks and broker sides of a registry change commit with it or not at all (``registry.signals``)."""

from __future__ import annotations

import pytest

from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import AdminState, Agent
from tasks import actions
from tasks.models import Task, TaskState

pytestmark = pytest.mark.django_db


class Refused(Exception):
    pass


def refuse(*args: object, **kwargs: object) -> None:
    raise Refused


def test_a_registration_whose_continuous_jobs_step_fails_is_not_recorded(operator, monkeypatch):
    monkeypatch.setattr(actions, "add_agent_to_continuous_jobs", refuse)

    with pytest.raises(Refused):
        registry_actions.register_agent("web-1", operator, labels={"role": "web"})

    assert not Agent.objects.filter(pk="web-1").exists()
    assert not AuditEvent.objects.exists()


def test_a_removal_whose_task_release_fails_keeps_the_agent_and_its_tasks(make_agent, operator, spec, monkeypatch):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    monkeypatch.setattr(actions, "release_tasks_of_removed_agent", refuse)

    with pytest.raises(Refused):
        registry_actions.remove_agent("a1", operator)

    assert Agent.objects.filter(pk="a1").exists()
    assert Task.objects.get(agent_id="a1").state == TaskState.QUEUED


def test_a_drain_that_is_rolled_back_sends_no_drain_message(make_agent, operator, monkeypatch):
    make_agent("node-1")
    monkeypatch.setattr(registry_actions, "record", refuse)  # the audit row, written after the message

    with pytest.raises(Refused):
        registry_actions.set_admin_state("node-1", AdminState.DRAINING, operator)

    assert Agent.objects.get(pk="node-1").admin_state == AdminState.ACTIVE
    assert not OutboxMessage.objects.exists()
