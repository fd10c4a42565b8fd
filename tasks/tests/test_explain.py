"""Why a task is not running: every reason ``actions.explain_task`` can give, and which one wins."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from aegis_site.core.errors import NotFound
from registry import actions as registry_actions
from registry.models import AdminState, Agent
from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Job, JobMode, JobState, Task

pytestmark = pytest.mark.django_db


def explain(task: Task) -> str:
    return actions.explain_task(task.pk).code


def send(agent_id: str, kind: str, task_id: int, attempt: int, **fields: Any) -> None:
    actions.report(agent_id, Report(kind, task_id, attempt, message_id=uuid.uuid4().hex, **fields))


@pytest.fixture
def submit(spec, operator, frozen_clock):
    def make(**fields: Any) -> list[Task]:
        job, _ = actions.submit_job(spec(**fields), operator)
        return list(Task.objects.filter(job=job).order_by("pk"))

    return make


def occupy(agent_id: str, spec, operator) -> None:
    """Fill the agent's capacity with tasks of another job."""
    agent = Agent.objects.get(pk=agent_id)
    actions.submit_job(spec(mode=JobMode.ANY, task_count=agent.max_concurrency, target_agent_ids=[agent_id]), operator)
    assert len(actions.claim_tasks(agent_id, agent.max_concurrency)) == agent.max_concurrency


# --- ready --------------------------------------------------------------------------


def test_pinned_task_with_available_agent_is_ready(make_agent, submit):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"])

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "ready"
    assert explanation.as_dict() == {"code": "ready", "message": explanation.message}


def test_any_task_with_one_available_matching_agent_is_ready(make_agent, submit, spec, operator):
    make_agent("busy", max_concurrency=1, labels={"pool": "x"})
    make_agent("free", labels={"pool": "x"})
    occupy("busy", spec, operator)
    (task,) = submit(mode=JobMode.ANY, task_count=1, target_labels={"pool": "x"})

    assert explain(task) == "ready"


# --- time and job state -------------------------------------------------------------


def test_task_before_its_not_before_time_says_not_before(make_agent, submit, frozen_clock):
    make_agent("a1")
    start = frozen_clock() + timedelta(minutes=5)
    (task,) = submit(target_agent_ids=["a1"], not_before=start)

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "not_before"
    assert start.isoformat() in explanation.message
    assert "not-before time" in explanation.message
    frozen_clock.advance(300)
    assert explain(task) == "ready"


def test_task_waiting_for_retry_says_not_before_with_backoff(make_agent, submit):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"])
    actions.claim_tasks("a1", 10)
    send("a1", "failed", task.pk, 1, error={"code": "E", "message": "x"})

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "not_before"
    assert "retry backoff" in explanation.message


def test_task_of_paused_job_says_job_paused(make_agent, submit, operator):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"])
    actions.pause_job(task.job_id, operator)

    assert explain(task) == "job_paused"
    actions.resume_job(task.job_id, operator)
    assert explain(task) == "ready"


def test_pause_is_reported_before_not_before(make_agent, submit, operator, frozen_clock):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"], not_before=frozen_clock() + timedelta(hours=1))
    actions.pause_job(task.job_id, operator)

    assert explain(task) == "job_paused"


@pytest.mark.parametrize("state", [JobState.ABORTED, JobState.CANCELED, JobState.FAILED])
def test_queued_task_of_closed_job_says_job_closed(make_agent, submit, state):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"])
    # No action leaves a queued task in a closed job; the dispatcher can still race an abort or cancel.
    Job.objects.filter(pk=task.job_id).update(state=state)

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "job_closed"
    assert state in explanation.message


# --- rollout limits -----------------------------------------------------------------


def test_task_held_back_by_in_flight_limit_says_rollout_in_flight(make_agent, submit):
    make_agent("a1")
    tasks = submit(mode=JobMode.ANY, task_count=3, max_in_flight=1)
    (assignment,) = actions.claim_tasks("a1", 10)
    waiting = next(task for task in tasks if task.pk != assignment.task_id)

    explanation = actions.explain_task(waiting.pk)

    assert explanation.code == "rollout_in_flight"
    assert "1 of 1" in explanation.message
    send("a1", "succeeded", assignment.task_id, 1)
    assert explain(waiting) == "ready"


def test_task_held_back_by_in_flight_percent_says_rollout_in_flight(make_agent, submit):
    make_agent("a1")
    tasks = submit(mode=JobMode.ANY, task_count=4, max_in_flight_percent=50)
    assert len(actions.claim_tasks("a1", 10)) == 2

    assert {explain(task) for task in tasks if Task.objects.get(pk=task.pk).state == "queued"} == {"rollout_in_flight"}


def test_task_held_back_by_rate_says_rollout_rate(make_agent, submit, frozen_clock):
    make_agent("a1")
    tasks = submit(mode=JobMode.ANY, task_count=2, rate_per_minute=1)
    (assignment,) = actions.claim_tasks("a1", 10)
    send("a1", "succeeded", assignment.task_id, 1)
    waiting = next(task for task in tasks if task.pk != assignment.task_id)

    assert explain(waiting) == "rollout_rate"
    frozen_clock.advance(60)
    assert explain(waiting) == "ready"


def test_not_before_is_reported_before_rollout_limit(make_agent, submit, frozen_clock):
    make_agent("a1")
    tasks = submit(mode=JobMode.ANY, task_count=2, max_in_flight=1)
    actions.claim_tasks("a1", 10)
    Task.objects.filter(pk__in=[t.pk for t in tasks], state="queued").update(
        not_before=frozen_clock() + timedelta(minutes=1)
    )
    waiting = Task.objects.get(job_id=tasks[0].job_id, state="queued")

    assert explain(waiting) == "not_before"


# --- the pinned agent ---------------------------------------------------------------


def test_pinned_task_of_offline_agent_says_agent_offline(make_agent, submit):
    make_agent("a1", online=False)
    (task,) = submit(target_agent_ids=["a1"])

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "agent_offline"
    assert "a1" in explanation.message
    registry_actions.mark_online("a1")
    assert explain(task) == "ready"


def test_pinned_task_of_draining_agent_says_agent_draining(make_agent, submit, operator):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"])
    registry_actions.set_admin_state("a1", AdminState.DRAINING, operator)

    assert explain(task) == "agent_draining"


def test_pinned_task_of_disabled_agent_says_agent_disabled(make_agent, submit, operator):
    make_agent("a1", online=False)
    (task,) = submit(target_agent_ids=["a1"])
    registry_actions.set_admin_state("a1", AdminState.DISABLED, operator)

    assert explain(task) == "agent_disabled"  # disabled is the reason to act on, before offline


def test_pinned_task_of_busy_agent_says_agent_at_capacity(make_agent, submit, spec, operator):
    make_agent("a1", max_concurrency=2)
    occupy("a1", spec, operator)
    (task,) = submit(target_agent_ids=["a1"])

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "agent_at_capacity"
    assert "a1" in explanation.message


def test_pinned_task_of_deleted_agent_says_agent_missing(make_agent, submit):
    make_agent("a1", labels={"pool": "x"})
    make_agent("a2", labels={"pool": "x"})
    (task, _) = submit(target_labels={"pool": "x"})
    assert task.agent_id == "a1"

    Agent.objects.filter(pk="a1").delete()

    assert task.pk not in [a.task_id for a in actions.claim_tasks("a2", 10)]  # nobody else may run a1's task
    task.refresh_from_db()
    assert (task.state, task.pinned) == ("queued", True)
    assert explain(task) == "agent_missing"


# --- 'any' tasks and the matching agents ----------------------------------------------


def test_any_task_with_no_matching_agent_says_no_matching_agent(make_agent, submit):
    make_agent("a1", capabilities=["echo"])
    (task,) = submit(mode=JobMode.ANY, task_count=1, target_capabilities=["gpu"])

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "no_matching_agent"
    assert "gpu" in explanation.message


def test_any_task_whose_matching_agents_are_offline_says_no_matching_agent_online(make_agent, submit):
    make_agent("a1", online=False, capabilities=["gpu"])
    make_agent("a2", online=False, capabilities=["gpu"])
    make_agent("a3", capabilities=["cpu"])
    (task,) = submit(mode=JobMode.ANY, task_count=1, target_capabilities=["gpu"])

    assert explain(task) == "no_matching_agent_online"


def test_any_task_whose_matching_agents_are_busy_says_all_agents_at_capacity(make_agent, submit, spec, operator):
    make_agent("a1", max_concurrency=1)
    make_agent("a2", max_concurrency=1)
    occupy("a1", spec, operator)
    occupy("a2", spec, operator)
    (task,) = submit(mode=JobMode.ANY, task_count=1)

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "all_agents_at_capacity"
    assert "all 2 matching agents" in explanation.message


def test_any_task_whose_matching_agents_are_blocked_for_mixed_reasons_names_them(make_agent, submit, spec, operator):
    make_agent("a1", max_concurrency=1)
    make_agent("a2", online=False)
    make_agent("a3", admin_state=AdminState.DRAINING)
    occupy("a1", spec, operator)
    (task,) = submit(mode=JobMode.ANY, task_count=1)

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "no_available_agent"
    assert "agent_at_capacity" in explanation.message
    assert "agent_offline" in explanation.message
    assert "agent_draining" in explanation.message


# --- tasks that are not queued ------------------------------------------------------


@pytest.fixture
def single(make_agent, submit):
    make_agent("a1")
    (task,) = submit(target_agent_ids=["a1"], max_attempts=1, delivery_timeout_s=30)
    return task


def test_assigned_task_says_task_assigned_with_agent_and_attempt(single):
    actions.claim_tasks("a1", 10)

    explanation = actions.explain_task(single.pk)

    assert explanation.code == "task_assigned"
    assert "a1" in explanation.message
    assert "attempt 1" in explanation.message


def test_running_task_says_task_running(single):
    actions.claim_tasks("a1", 10)
    send("a1", "accepted", single.pk, 1)

    assert explain(single) == "task_running"


@pytest.mark.parametrize("end", ["succeeded", "failed", "timed_out", "canceled"])
def test_finished_task_says_its_final_state(single, operator, frozen_clock, end):
    actions.claim_tasks("a1", 10)
    if end == "succeeded":
        send("a1", "succeeded", single.pk, 1)
    elif end == "failed":
        send("a1", "failed", single.pk, 1, error={"code": "E", "message": "x"})
    elif end == "timed_out":
        frozen_clock.advance(31)
        actions.expire_leases()
    else:
        actions.cancel_task(single.pk, operator, force=True)

    explanation = actions.explain_task(single.pk)

    assert explanation.code == f"task_{end}"
    assert explanation.message == f"finished: {end.replace('_', ' ')}"  # the state's label: "timed out"


def test_explain_of_unknown_task_raises_not_found(db):
    with pytest.raises(NotFound):
        actions.explain_task(987654)


# --- held by an agent that is offline or draining: what happens next ------------------------------------------------


def test_task_on_an_offline_agent_says_since_when_and_what_the_lease_expiry_does(make_agent, submit, frozen_clock):
    make_agent("edge-1")
    (task,) = submit(target_agent_ids=["edge-1"], max_attempts=3, execution_timeout_s=300)
    actions.claim_tasks("edge-1", 1)
    send("edge-1", "accepted", task.pk, 1)
    frozen_clock.advance(4)
    registry_actions.mark_offline("edge-1", "keepalive timeout")

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "held_by_offline_agent"
    assert explanation.message == (
        "running on agent edge-1 (attempt 1 of 3): agent edge-1 is offline since 12:00:00 UTC; "
        "the lease expires at 12:05:00 UTC, then the task is requeued (attempt 2 of 3). "
        "The reconciliation page can end the attempt now."
    )


def test_last_attempt_on_an_offline_agent_says_it_ends_timed_out(make_agent, submit, frozen_clock):
    make_agent("edge-1")
    (task,) = submit(target_agent_ids=["edge-1"], max_attempts=1, delivery_timeout_s=30)
    actions.claim_tasks("edge-1", 1)
    registry_actions.mark_offline("edge-1", "keepalive timeout")
    frozen_clock.advance(45)  # past the lease: the dispatcher has not handled it yet

    message = actions.explain_task(task.pk).message

    assert message.startswith("assigned on agent edge-1 (attempt 1 of 1): agent edge-1 is offline since 12:00:00 UTC;")
    assert "the lease expired at 12:00:30 UTC; the dispatcher ends the attempt on its next pass" in message
    assert message.endswith(
        "then the task ends timed out (attempt 1 of 1 was its last). The reconciliation page can end the attempt now."
    )


def test_task_on_a_draining_agent_says_it_finishes_there(make_agent, submit, operator, frozen_clock):
    make_agent("edge-2")
    (task,) = submit(target_agent_ids=["edge-2"], max_attempts=2, execution_timeout_s=60)
    actions.claim_tasks("edge-2", 1)
    send("edge-2", "accepted", task.pk, 1)
    registry_actions.set_admin_state("edge-2", AdminState.DRAINING, operator)

    explanation = actions.explain_task(task.pk)

    assert explanation.code == "held_by_draining_agent"
    assert "agent edge-2 is draining, it finishes this task and takes no new one" in explanation.message
    assert "the lease expires at 12:01:00 UTC, then the task is requeued (attempt 2 of 2)" in explanation.message


def test_task_on_an_online_agent_says_when_its_lease_runs_out(single):
    actions.claim_tasks("a1", 10)

    explanation = actions.explain_task(single.pk)

    assert explanation.code == "task_assigned"
    assert explanation.message == (
        "assigned on agent a1 (attempt 1 of 1); should the agent not accept in time, "
        "the lease expires at 12:00:30 UTC, then the task ends timed out (attempt 1 of 1 was its last)"
    )
