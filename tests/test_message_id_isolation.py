"""One agent cannot have another's result dropped by using its message id first (issue 13, item 3).

The attack, against the real stack: Mosquitto started from the generated configuration
(TLS, the ACL), each agent with its own certificate publishing only on its own
``events`` topic (all the ACL lets it do), the bridge with its certificate, the HTTP
API with each agent's token. Agent B reports on its own task with the id agent A is
about to use. Message ids used to be unique across agents, so A's real result was
dropped as ``duplicate`` and its task stayed ``assigned``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, Task, TaskEvent, TaskState
from tests.support import envelope, mqtt_dropped, wait_for
from tests.test_broker_security import Broker, Probe, agent, broker, probes  # noqa: F401  (fixtures)
from tests.test_e2e_tls import tls_bridge  # noqa: F401  (the bridge on that broker, with its certificate)

pytestmark = pytest.mark.django_db(transaction=True)


def event(message_id: str, message_type: str, **fields: Any) -> bytes:
    """A task event with the id the test chooses (an agent chooses its own ids)."""
    return json.dumps({**json.loads(envelope(message_type, **fields)), "id": message_id}).encode()


def online(broker: Broker, probes: Callable[[str], Probe], agent_id: str) -> Probe:  # noqa: F811
    """An agent with its own certificate that said hello and is known online."""
    probe = agent(broker, probes, agent_id)
    probe.subscribe(f"aegis/agents/{agent_id}/inbox")
    prefix = f"aegis/agents/{agent_id}"
    assert probe.publish(f"{prefix}/status", envelope("status", state="online")).value == 0
    hello = envelope("hello", agent_version="test-1", capabilities=["echo"], labels={}, max_concurrency=4, running=[])
    assert probe.publish(f"{prefix}/hello", hello).value == 0
    wait_for(
        lambda: Agent.objects.filter(pk=agent_id, connectivity=Connectivity.ONLINE).exists(), what=f"{agent_id} hello"
    )
    return probe


def assigned_task(agent_id: str, spec: Any, operator: Actor) -> Task:
    job, _ = actions.submit_job(spec(target_agent_ids=[agent_id]), operator)
    Dispatcher().assign()
    task = Task.objects.get(job=job)
    assert (task.state, task.agent_id, task.attempt) == (TaskState.ASSIGNED, agent_id, 1)
    return task


def state_of(task: Task) -> Callable[[], str]:
    return lambda: Task.objects.get(pk=task.pk).state


def test_two_agents_publishing_the_same_message_id_both_get_their_results(broker, probes, tls_bridge, spec, operator):  # noqa: F811
    agent_a, agent_b = online(broker, probes, "agent-a"), online(broker, probes, "agent-b")
    task_a, task_b = assigned_task("agent-a", spec, operator), assigned_task("agent-b", spec, operator)
    duplicates_before = mqtt_dropped()["duplicate"]

    # B first, with the id A will use: for instance one B saw A use before, or an id scheme it can predict.
    taken = event("result-0001", "task.succeeded", task_id=task_b.pk, attempt=1, result={"by": "b"})
    assert agent_b.publish("aegis/agents/agent-b/events", taken).value == 0
    wait_for(lambda: state_of(task_b)() == TaskState.SUCCEEDED, what="B's task succeeded")
    real = event("result-0001", "task.succeeded", task_id=task_a.pk, attempt=1, result={"by": "a"})
    assert agent_a.publish("aegis/agents/agent-a/events", real).value == 0

    wait_for(lambda: state_of(task_a)() == TaskState.SUCCEEDED, what="A's task succeeded (not dropped as duplicate)")
    assert Task.objects.get(pk=task_a.pk).result == {"by": "a"}
    assert Task.objects.get(pk=task_b.pk).result == {"by": "b"}
    assert Job.objects.get(pk=task_a.job_id).state == "succeeded"
    assert mqtt_dropped()["duplicate"] == duplicates_before

    # The same agent sending its id again is still one message (a redelivery).
    assert agent_a.publish("aegis/agents/agent-a/events", real).value == 0
    wait_for(lambda: mqtt_dropped()["duplicate"] == duplicates_before + 1, what="A's replay counted as duplicate")
    assert TaskEvent.objects.filter(message_id="result-0001").count() == 2


def test_an_mqtt_agent_cannot_take_an_http_agents_event_id(broker, probes, tls_bridge, spec, operator, make_agent):  # noqa: F811
    """HTTP event ids used to be stored as ``h:{agent}:{event_id}``, an id any MQTT agent may publish."""
    make_agent("http-a")
    _credential, token = registry_actions.issue_token("http-a", operator)
    http_a = APIClient()
    http_a.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    actions.submit_job(spec(target_agent_ids=["http-a"]), operator)
    claimed = http_a.post("/api/v1/agent/tasks/claim/", {"max_tasks": 1}, format="json")
    assert claimed.status_code == 200, claimed.content
    (task_a,) = claimed.json()["tasks"]
    agent_b = online(broker, probes, "agent-b")
    task_b = assigned_task("agent-b", spec, operator)

    for message_id in ("41-1-done", "h:http-a:41-1-done"):  # the id as sent, and as the old code stored it
        taken = event(message_id, "task.progress", task_id=task_b.pk, attempt=1, progress={"pct": 1})
        assert agent_b.publish("aegis/agents/agent-b/events", taken).value == 0
    wait_for(lambda: TaskEvent.objects.filter(agent_id="agent-b", kind="progress").count() == 2, what="B's events")

    url = f"/api/v1/agent/tasks/{task_a['id']}/events/"
    body = {"type": "succeeded", "attempt": 1, "event_id": "41-1-done", "result": {"by": "http-a"}}
    answer = http_a.post(url, body, format="json")

    assert answer.status_code == 200, answer.content
    assert answer.json() == {"status": "applied", "state": "succeeded"}
    assert Task.objects.get(pk=task_a["id"]).result == {"by": "http-a"}
    assert http_a.post(url, body, format="json").json()["status"] == "duplicate"  # its own retry counts once


def test_two_http_agents_posting_the_same_event_id_are_both_applied(make_agent, spec, operator):
    clients = {}
    for agent_id in ("http-a", "http-b"):
        make_agent(agent_id)
        _credential, token = registry_actions.issue_token(agent_id, operator)
        clients[agent_id] = APIClient()
        clients[agent_id].credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        actions.submit_job(spec(target_agent_ids=[agent_id]), operator)

    for agent_id, client in clients.items():
        (task,) = client.post("/api/v1/agent/tasks/claim/", {"max_tasks": 1}, format="json").json()["tasks"]
        body = {"type": "succeeded", "attempt": 1, "event_id": "e1", "result": {"by": agent_id}}
        answer = client.post(f"/api/v1/agent/tasks/{task['id']}/events/", body, format="json")
        assert answer.json() == {"status": "applied", "state": "succeeded"}, agent_id
        assert Task.objects.get(pk=task["id"]).result == {"by": agent_id}
