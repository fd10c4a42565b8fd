"""A lease that runs out ends the attempt on the server and tells the agent to stop it."""

from __future__ import annotations

import pytest

from broker.models import OutboxMessage
from broker.protocol import Hello, parse_agent_message
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Task, TaskState
from tests.support import envelope

pytestmark = pytest.mark.django_db


def cancels(agent_id: str) -> list[dict]:
    rows = OutboxMessage.objects.filter(agent_id=agent_id, message_type="task.cancel").order_by("id")
    return [{k: m.payload[k] for k in ("task_id", "attempt", "force")} for m in rows]


@pytest.mark.parametrize("accept", [True, False], ids=["execution", "delivery"])
def test_an_expired_lease_sends_a_forced_cancel_for_that_attempt(make_agent, spec, operator, frozen_clock, accept):
    make_agent("a1")
    actions.submit_job(spec(task_count=1, max_attempts=3, execution_timeout_s=60, delivery_timeout_s=30), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    if accept:
        actions.report("a1", Report("accepted", assignment.task_id, assignment.attempt))

    frozen_clock.advance(61)
    assert actions.expire_leases(10) == 1

    task = Task.objects.get(pk=assignment.task_id)
    assert task.state == TaskState.QUEUED
    assert cancels("a1") == [{"task_id": task.pk, "attempt": 1, "force": True}]


def test_a_lease_that_has_not_run_out_sends_nothing(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(task_count=1, execution_timeout_s=60), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    actions.report("a1", Report("accepted", assignment.task_id, assignment.attempt))

    frozen_clock.advance(30)
    assert actions.expire_leases(10) == 0
    assert cancels("a1") == []


def test_a_hello_without_finished_still_parses_and_one_with_it_carries_the_pairs():
    running = [{"task_id": 7, "attempt": 1}]
    fields = {"agent_version": "1", "capabilities": [], "labels": {}, "max_concurrency": 1, "running": running}
    old = parse_agent_message("aegis/agents/a1/hello", envelope("hello", **fields))
    new = parse_agent_message(
        "aegis/agents/a1/hello", envelope("hello", **fields, finished=[{"task_id": 8, "attempt": 2}])
    )
    assert isinstance(old, Hello)
    assert isinstance(new, Hello)
    assert old.finished == ()
    assert [(f.task_id, f.attempt) for f in new.finished] == [(8, 2)]
