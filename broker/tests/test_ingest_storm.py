"""A reconnect storm (every agent's status and hello after a broker restart) is applied set-based.

The bridge's batch of hellos and statuses costs the same statements for 40 agents as for 4
(it cost a few per agent: about 2 minutes of ingest per broker restart with 1,000 agents in the
soak, bench/soak.py), and each agent's own messages still apply in the order it sent them.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aegis_site.core.models import AuditEvent
from broker.ingest import Incoming, ingest
from broker.models import OutboxMessage
from broker.presence import HeartbeatBuffer
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Task, TaskState
from tests.support import envelope

pytestmark = pytest.mark.django_db


def status(agent_id: str, state: str) -> Incoming:
    return Incoming(f"aegis/agents/{agent_id}/status", envelope("status", state=state))


def hello(agent_id: str, running: list[dict[str, int]] | None = None, version: str = "1") -> Incoming:
    body = envelope(
        "hello", agent_version=version, capabilities=["echo"], labels={}, max_concurrency=2, running=running or []
    )
    return Incoming(f"aegis/agents/{agent_id}/hello", body)


def succeeded(agent_id: str, task_id: int, attempt: int) -> Incoming:
    body = envelope("task.succeeded", task_id=task_id, attempt=attempt, result={"ok": True})
    return Incoming(f"aegis/agents/{agent_id}/events", body)


def fleet_holding_tasks(count: int, spec: Any, operator: Any) -> dict[str, list[tuple[int, int]]]:
    """``count`` offline agents, each holding two tasks: one it runs (accepted), one still assigned."""
    Agent.objects.bulk_create(
        [
            Agent(pk=f"s{n:03}", connectivity=Connectivity.OFFLINE, max_concurrency=2, capabilities=["echo"])
            for n in range(count)
        ]
    )
    actions.submit_job(spec(mode="any", task_count=2 * count), operator)
    held: dict[str, list[tuple[int, int]]] = {}
    for n in range(count):
        agent_id = f"s{n:03}"
        claimed = actions.claim_tasks(agent_id, 2)
        actions.report(agent_id, Report("accepted", claimed[0].task_id, claimed[0].attempt))
        held[agent_id] = [(a.task_id, a.attempt) for a in claimed]
    return held


def storm(held: dict[str, list[tuple[int, int]]]) -> list[Incoming]:
    """Each agent's status then hello, reporting only the task it runs (the assigned one never arrived)."""
    batch = []
    for agent_id, ((task_id, attempt), _) in held.items():
        batch += [status(agent_id, "online"), hello(agent_id, [{"task_id": task_id, "attempt": attempt}])]
    return batch


def queries_for_a_storm(count: int, spec: Any, operator: Any) -> int:
    Agent.objects.all().delete()
    held = fleet_holding_tasks(count, spec, operator)
    with CaptureQueriesContext(connection) as queries:
        assert ingest(storm(held), HeartbeatBuffer()) == 2 * count
    assert Agent.objects.filter(pk__in=held, connectivity=Connectivity.ONLINE).count() == count
    resent = {m.payload["task"]["id"] for m in OutboxMessage.objects.filter(message_type="task.assign")}
    assert {assigned[0] for _, assigned in held.values()} <= resent  # each agent's lost assignment went again
    running = Task.objects.filter(pk__in=[runs[0] for runs, _ in held.values()], state=TaskState.RUNNING)
    assert running.count() == count  # what each agent said it runs stays running
    return len(queries)


def test_a_storm_of_forty_agents_costs_the_statements_of_four(spec, operator) -> None:
    small = queries_for_a_storm(4, spec, operator)
    large = queries_for_a_storm(40, spec, operator)

    assert large == small


def test_each_agents_own_order_holds_in_a_batch(make_agent, spec, operator) -> None:
    make_agent("ord-a", online=False, max_concurrency=2)
    make_agent("ord-b", online=True)
    make_agent("ord-c", online=True)
    batch = [
        hello("ord-a", version="2"),  # comes online with its hello ...
        status("ord-a", "offline"),  # ... and then its Last Will: offline at the end
        status("ord-b", "offline"),
        status("ord-b", "online"),  # offline, then back: online at the end
        status("ord-c", "offline"),
    ]

    ingest(batch, HeartbeatBuffer())

    states = dict(Agent.objects.values_list("pk", "connectivity"))
    assert states == {"ord-a": "offline", "ord-b": "online", "ord-c": "offline"}
    assert Agent.objects.get(pk="ord-a").version == "2"
    assert AuditEvent.objects.filter(object_id="ord-a", action="agent.update").count() == 1


def test_a_hello_after_an_event_of_the_same_agent_does_not_overtake_it(make_agent, spec, operator) -> None:
    """The agent's result, then its hello (no longer listing the task): the result applies first, so the
    hello finds nothing to reconcile, and the task succeeded (it is not lost)."""
    make_agent("ev-a")
    actions.submit_job(spec(mode="any", task_count=1), operator)
    (claimed,) = actions.claim_tasks("ev-a", 1)
    actions.report("ev-a", Report("accepted", claimed.task_id, claimed.attempt))

    ingest([succeeded("ev-a", claimed.task_id, claimed.attempt), hello("ev-a")], HeartbeatBuffer())

    assert Task.objects.get(pk=claimed.task_id).state == TaskState.SUCCEEDED


def test_new_agents_of_a_storm_are_created_and_audited_once_each(db) -> None:
    ingest([hello(f"new-{n}") for n in range(5)], HeartbeatBuffer())

    assert Agent.objects.filter(pk__startswith="new-", connectivity=Connectivity.ONLINE).count() == 5
    assert AuditEvent.objects.filter(action="agent.register", object_id__startswith="new-").count() == 5
