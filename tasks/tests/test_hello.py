"""An agent's hello as one action (``agent_said_hello``): recorded, reconciled, and into its continuous jobs."""

from __future__ import annotations

import pytest

from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry.models import Agent, Connectivity, Transport
from tasks import actions
from tasks.models import Task, TaskState

pytestmark = pytest.mark.django_db


def hello(agent_id: str, labels: dict[str, str] | None = None, running: set[tuple[int, int]] | None = None):
    return actions.agent_said_hello(
        agent_id,
        version="1.0",
        capabilities=["echo"],
        labels=labels or {},
        max_concurrency=4,
        running=running or set(),
    )


def test_a_first_hello_creates_the_agent_online_over_mqtt(operator):
    hello("edge-1", {"role": "web"})

    agent = Agent.objects.get(pk="edge-1")
    assert (agent.connectivity, agent.transport, agent.labels) == (Connectivity.ONLINE, Transport.MQTT, {"role": "web"})
    assert AuditEvent.objects.filter(object_id="edge-1", action="agent.register").count() == 1


def test_a_new_agent_joins_an_open_continuous_job_it_matches_on_its_first_hello(operator, spec):
    job, _ = actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)

    hello("web-1", {"role": "web"})
    hello("db-1", {"role": "db"})

    (task,) = Task.objects.filter(job=job)
    assert (task.agent_id, task.pinned, task.state) == ("web-1", True, TaskState.QUEUED)


def test_an_agent_relabelled_by_its_hello_joins_the_continuous_job_once(operator, spec):
    hello("node-1", {"role": "db"})
    job, _ = actions.submit_job(spec(continuous=True, target_labels={"role": "web"}), operator)

    hello("node-1", {"role": "web"})
    hello("node-1", {"role": "web"})

    assert list(Task.objects.filter(job=job).values_list("agent_id", flat=True)) == ["node-1"]


def test_a_hello_that_lacks_an_assignment_gets_it_sent_again(make_agent, operator, spec):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (assignment,) = actions.claim_tasks("a1", 10)

    result = hello("a1")

    assert result.resent == [assignment.task_id]
    assert OutboxMessage.objects.filter(agent_id="a1", message_type="task.assign").count() == 1
