"""On hello, the server's view of what an agent holds is brought in line with what the agent says it runs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.models import OutboxMessage
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db


def held_task(make_agent, spec, operator, accept: bool, **job):
    make_agent("a1")
    actions.submit_job(spec(mode="any", task_count=1, **job), operator)
    (assignment,) = actions.claim_tasks("a1", 1)
    if accept:
        actions.report("a1", Report("accepted", assignment.task_id, assignment.attempt))
    return Task.objects.get(pk=assignment.task_id)


def test_an_assignment_the_agent_never_got_is_sent_again_with_the_same_attempt(
    make_agent, spec, operator, frozen_clock
):
    task = held_task(make_agent, spec, operator, accept=False, delivery_timeout_s=30)
    frozen_clock.advance(20)

    result = actions.reconcile_agent("a1", set())

    assert result.resent == [task.pk]
    task.refresh_from_db()
    assert task.state == TaskState.ASSIGNED
    assert task.attempt == 1
    assert task.lease_expires_at == frozen_clock() + timedelta(seconds=30)
    resent = OutboxMessage.objects.filter(message_type="task.assign").order_by("-id").first()
    assert resent.payload["task"]["id"] == task.pk
    assert resent.payload["task"]["attempt"] == 1
    assert TaskEvent.objects.filter(task=task, kind="resent").count() == 1


def test_a_running_task_the_agent_lost_is_requeued_with_the_attempt_used(make_agent, spec, operator, frozen_clock):
    task = held_task(make_agent, spec, operator, accept=True, max_attempts=3)

    result = actions.reconcile_agent("a1", set())

    assert result.lost == [task.pk]
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert task.agent_id is None
    assert task.error["code"] == "agent_lost"
    event = TaskEvent.objects.get(task=task, kind="agent_lost")
    assert (event.from_state, event.to_state, event.attempt) == ("running", "queued", 1)


def test_a_lost_task_without_attempts_left_fails_and_the_job_rolls_up(make_agent, spec, operator, frozen_clock):
    task = held_task(make_agent, spec, operator, accept=True, max_attempts=1)

    actions.reconcile_agent("a1", set())

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert task.job.state == "failed"


def test_tasks_the_agent_lists_with_the_current_attempt_are_left_alone(make_agent, spec, operator, frozen_clock):
    task = held_task(make_agent, spec, operator, accept=True)
    before = TaskEvent.objects.count()

    result = actions.reconcile_agent("a1", {(task.pk, task.attempt)})

    assert (result.resent, result.lost, result.canceled) == ([], [], [])
    assert TaskEvent.objects.count() == before
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING


def test_work_the_agent_runs_that_is_no_longer_its_own_gets_a_forced_cancel(make_agent, spec, operator, frozen_clock):
    task = held_task(make_agent, spec, operator, accept=True)
    actions.cancel_task(task.pk, operator, force=True)

    result = actions.reconcile_agent("a1", {(task.pk, task.attempt), (999_999, 2)})

    assert result.canceled == [task.pk, 999_999]
    cancels = OutboxMessage.objects.filter(message_type="task.cancel", agent_id="a1").order_by("id")
    assert [m.payload["task_id"] for m in cancels][-2:] == [task.pk, 999_999]
    assert all(m.payload["force"] for m in cancels[1:])


def test_tasks_the_agent_lists_as_finished_are_left_for_their_result(make_agent, spec, operator, frozen_clock):
    """After a broker restart the hello overtakes the buffered results: those attempts must not end as lost."""
    task = held_task(make_agent, spec, operator, accept=True, max_attempts=3)
    before = TaskEvent.objects.count()

    result = actions.reconcile_agent("a1", set(), frozenset({(task.pk, task.attempt)}))

    assert (result.lost, result.resent, result.canceled, result.finishing) == ([], [], [], [task.pk])
    assert TaskEvent.objects.count() == before
    outcome = actions.report("a1", Report("succeeded", task.pk, task.attempt, result={"ok": True}))
    assert outcome.status == "applied"
    task.refresh_from_db()
    assert (task.state, task.attempt, task.result) == (TaskState.SUCCEEDED, 1, {"ok": True})


def test_a_finished_task_that_is_no_longer_ours_gets_no_cancel(make_agent, spec, operator, frozen_clock):
    task = held_task(make_agent, spec, operator, accept=True)
    actions.report("a1", Report("succeeded", task.pk, task.attempt, result=None))
    cancels = OutboxMessage.objects.filter(message_type="task.cancel").count()

    result = actions.reconcile_agent("a1", set(), frozenset({(task.pk, task.attempt)}))

    assert result.canceled == []
    assert OutboxMessage.objects.filter(message_type="task.cancel").count() == cancels
