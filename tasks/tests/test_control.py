"""Operator controls: cancel, pause/resume, retry, the abort rule, rollout limits, and their audit trail."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aegis_site.core.errors import InvalidTransition, NotFound
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from tasks import actions
from tasks.engine.reports import Outcome, Report
from tasks.models import Job, JobMode, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db

ERROR = {"code": "E", "message": "boom"}
HELD = (TaskState.ASSIGNED, TaskState.RUNNING)


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON field that must hold an object here."""
    assert isinstance(value, dict), value
    return value


def send(agent_id: str, kind: str, task_id: int, attempt: int, **fields: Any) -> Outcome:
    return actions.report(agent_id, Report(kind, task_id, attempt, message_id=uuid.uuid4().hex, **fields))


def reload(obj: Any) -> Any:
    obj.refresh_from_db()
    return obj


def last_event(task_id: int) -> TaskEvent:
    return TaskEvent.objects.filter(task_id=task_id).latest("id")


def cancel_messages(agent_id: str) -> list[dict[str, Any]]:
    return [
        m.payload for m in OutboxMessage.objects.filter(agent_id=agent_id, message_type="task.cancel").order_by("id")
    ]


def counters(job: Job) -> tuple[str, int, int, int]:
    job.refresh_from_db()
    return job.state, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled


def audit_actions(object_type: str, object_id: int) -> list[str]:
    return list(
        AuditEvent.objects.filter(object_type=object_type, object_id=str(object_id))
        .order_by("id")
        .values_list("action", flat=True)
    )


@pytest.fixture
def one_task(make_agent, spec, operator, frozen_clock):
    """Return a function that submits a one-task job for a1 and brings its task to the requested state."""
    make_agent("a1")

    def make(state: str = "queued", **fields: Any) -> Task:
        fields.setdefault("max_attempts", 3)
        job, _ = actions.submit_job(spec(target_agent_ids=["a1"], **fields), operator)
        (task,) = Task.objects.filter(job=job)
        if state in ("assigned", "running"):
            actions.claim_tasks("a1", 10)
        if state == "running":
            send("a1", "accepted", task.pk, 1)
        return reload(task)

    return make


# --- cancel a task ------------------------------------------------------------------


def test_cancel_queued_task_ends_it_at_once(one_task, operator, frozen_clock):
    task = one_task("queued")

    result = actions.cancel_task(task.pk, operator)

    assert result.state == TaskState.CANCELED
    assert result.finished_at == frozen_clock()
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state) == ("canceled", "queued", "canceled")
    assert as_dict(event.data)["by"] == "tester"
    assert not OutboxMessage.objects.filter(message_type="task.cancel").exists()
    assert counters(task.job) == (JobState.CANCELED, 0, 0, 1)
    assert actions.claim_tasks("a1", 10) == []


@pytest.mark.parametrize("state", ["assigned", "running"])
def test_cancel_held_task_asks_the_agent_and_keeps_it_held(one_task, operator, frozen_clock, state):
    task = one_task(state)

    result = actions.cancel_task(task.pk, operator)

    assert result.state == state
    assert result.cancel_requested_at == frozen_clock()
    assert result.finished_at is None
    (message,) = cancel_messages("a1")
    assert (message["type"], message["task_id"], message["attempt"], message["force"]) == (
        "task.cancel",
        task.pk,
        1,
        False,
    )
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state, event.attempt) == ("cancel_requested", state, state, 1)
    assert counters(task.job) == (JobState.RUNNING, 0, 0, 0)


@pytest.mark.parametrize("state", ["assigned", "running"])
def test_failure_after_cancel_request_ends_task_canceled_not_retried(one_task, operator, frozen_clock, state):
    task = one_task(state, max_attempts=5)
    actions.cancel_task(task.pk, operator)

    outcome = send("a1", "failed", task.pk, 1, error={"code": "canceled", "message": "stopped"})

    assert (outcome.status, outcome.state) == ("applied", "canceled")
    task = reload(task)
    assert task.state == TaskState.CANCELED
    assert task.finished_at == frozen_clock()
    assert last_event(task.pk).to_state == "canceled"
    assert counters(task.job) == (JobState.CANCELED, 0, 0, 1)


def test_rejection_after_cancel_request_ends_task_canceled(one_task, operator):
    task = one_task("assigned", max_attempts=5)
    actions.cancel_task(task.pk, operator)

    send("a1", "rejected", task.pk, 1)

    assert reload(task).state == TaskState.CANCELED


@pytest.mark.parametrize(("state", "lease_s"), [("assigned", 31), ("running", 301)])
def test_lease_expiry_after_cancel_request_ends_task_canceled(one_task, operator, frozen_clock, state, lease_s):
    task = one_task(state, max_attempts=5, delivery_timeout_s=30, execution_timeout_s=300)
    actions.cancel_task(task.pk, operator)
    frozen_clock.advance(lease_s)

    assert actions.expire_leases() == 1

    task = reload(task)
    assert task.state == TaskState.CANCELED
    assert last_event(task.pk).to_state == "canceled"
    assert counters(task.job) == (JobState.CANCELED, 0, 0, 1)


def test_second_cancel_without_force_is_refused(one_task, operator):
    task = one_task("running")
    actions.cancel_task(task.pk, operator)

    with pytest.raises(InvalidTransition):
        actions.cancel_task(task.pk, operator)

    assert len(cancel_messages("a1")) == 1


def test_forced_cancel_after_cancel_request_ends_task(one_task, operator):
    task = one_task("running")
    actions.cancel_task(task.pk, operator)

    result = actions.cancel_task(task.pk, operator, force=True)

    assert result.state == TaskState.CANCELED
    assert [m["force"] for m in cancel_messages("a1")] == [False, True]


@pytest.mark.parametrize("state", ["assigned", "running"])
def test_forced_cancel_ends_held_task_at_once(one_task, operator, frozen_clock, state):
    task = one_task(state)

    result = actions.cancel_task(task.pk, operator, force=True)

    assert result.state == TaskState.CANCELED
    assert result.finished_at == frozen_clock()
    assert result.lease_expires_at is None
    (message,) = cancel_messages("a1")
    assert (message["task_id"], message["attempt"], message["force"]) == (task.pk, 1, True)
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state) == ("canceled", state, "canceled")
    assert counters(task.job) == (JobState.CANCELED, 0, 0, 1)


def test_result_after_forced_cancel_is_stale(one_task, operator):
    task = one_task("running")
    actions.cancel_task(task.pk, operator, force=True)

    outcome = send("a1", "succeeded", task.pk, 1, result={"late": True})

    assert outcome.status == "stale"
    task = reload(task)
    assert (task.state, task.result) == (TaskState.CANCELED, None)
    assert counters(task.job) == (JobState.CANCELED, 0, 0, 1)


@pytest.mark.parametrize("terminal", ["succeeded", "failed", "canceled"])
def test_cancel_of_terminal_task_is_refused(one_task, operator, terminal):
    task = one_task("running", max_attempts=1)
    if terminal == "succeeded":
        send("a1", "succeeded", task.pk, 1)
    elif terminal == "failed":
        send("a1", "failed", task.pk, 1, error=ERROR)
    else:
        actions.cancel_task(task.pk, operator, force=True)
    events_before = TaskEvent.objects.count()

    with pytest.raises(InvalidTransition):
        actions.cancel_task(task.pk, operator, force=True)

    assert reload(task).state == terminal
    assert TaskEvent.objects.count() == events_before


def test_cancel_of_unknown_task_raises_not_found(db, operator):
    with pytest.raises(NotFound):
        actions.cancel_task(123456, operator)


# --- cancel a job -------------------------------------------------------------------


@pytest.fixture
def three_agent_job(make_agent, spec, operator, frozen_clock):
    """a1 runs its task, a2 has one assigned, a3's task is still queued (a3 is draining)."""
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id, labels={"role": "web"})

    def make(**fields: Any) -> tuple[Job, dict[str, Task]]:
        job, _ = actions.submit_job(spec(target_labels={"role": "web"}, **fields), operator)
        actions.claim_tasks("a1", 10)
        actions.claim_tasks("a2", 10)
        tasks = {str(task.agent_id): task for task in Task.objects.filter(job=job)}
        send("a1", "accepted", tasks["a1"].pk, 1)
        return job, {agent_id: reload(task) for agent_id, task in tasks.items()}

    return make


def test_cancel_job_ends_queued_tasks_and_asks_agents_to_stop_held_ones(three_agent_job, operator, frozen_clock):
    job, tasks = three_agent_job()

    result = actions.cancel_job(job.pk, operator)

    assert result.state == JobState.CANCELED
    assert reload(tasks["a3"]).state == TaskState.CANCELED
    for agent_id in ("a1", "a2"):
        task = reload(tasks[agent_id])
        assert task.state in HELD
        assert task.cancel_requested_at == frozen_clock()
        assert [m["task_id"] for m in cancel_messages(agent_id)] == [task.pk]
    assert result.finished_at is None
    assert actions.claim_tasks("a3", 10) == []


def test_canceled_job_finishes_when_its_held_tasks_end(three_agent_job, operator, frozen_clock):
    job, tasks = three_agent_job(delivery_timeout_s=30)
    actions.cancel_job(job.pk, operator)

    send("a1", "failed", tasks["a1"].pk, 1, error=ERROR)
    assert reload(job).finished_at is None
    frozen_clock.advance(31)
    actions.expire_leases()

    assert counters(job) == (JobState.CANCELED, 0, 0, 3)
    assert reload(job).finished_at == frozen_clock()


def test_forced_cancel_job_ends_every_open_task_at_once(three_agent_job, operator, frozen_clock):
    job, tasks = three_agent_job()

    result = actions.cancel_job(job.pk, operator, force=True)

    assert result.state == JobState.CANCELED
    assert result.finished_at == frozen_clock()
    assert {reload(task).state for task in tasks.values()} == {TaskState.CANCELED}
    assert (result.tasks_canceled, result.tasks_total) == (3, 3)
    assert [m["force"] for m in cancel_messages("a1")] == [True]
    assert send("a2", "succeeded", tasks["a2"].pk, 1).status == "stale"


def test_cancel_job_keeps_finished_tasks_as_they_are(three_agent_job, operator):
    job, tasks = three_agent_job()
    send("a1", "succeeded", tasks["a1"].pk, 1)

    actions.cancel_job(job.pk, operator, force=True)

    assert reload(tasks["a1"]).state == TaskState.SUCCEEDED
    assert counters(job) == (JobState.CANCELED, 1, 0, 2)


def test_cancel_of_finished_job_is_refused(one_task, operator):
    task = one_task("running")
    send("a1", "succeeded", task.pk, 1)

    with pytest.raises(InvalidTransition):
        actions.cancel_job(task.job_id, operator)

    assert reload(task.job).state == JobState.SUCCEEDED


# --- pause / resume -----------------------------------------------------------------


def test_paused_job_tasks_are_not_claimed_until_resumed(one_task, operator):
    task = one_task("queued")

    paused = actions.pause_job(task.job_id, operator)

    assert paused.state == JobState.PAUSED
    assert actions.claim_tasks("a1", 10) == []
    assert actions.explain_task(task.pk).code == "job_paused"

    resumed = actions.resume_job(task.job_id, operator)

    assert resumed.state == JobState.SCHEDULED
    assert [a.task_id for a in actions.claim_tasks("a1", 10)] == [task.pk]


def test_resumed_job_that_had_started_is_running(three_agent_job, operator):
    job, tasks = three_agent_job()
    actions.pause_job(job.pk, operator)
    assert actions.claim_tasks("a3", 10) == []

    resumed = actions.resume_job(job.pk, operator)

    assert resumed.state == JobState.RUNNING
    assert [a.task_id for a in actions.claim_tasks("a3", 10)] == [tasks["a3"].pk]


def test_tasks_already_running_finish_while_job_is_paused(three_agent_job, operator):
    job, tasks = three_agent_job()
    actions.pause_job(job.pk, operator)

    outcome = send("a1", "succeeded", tasks["a1"].pk, 1)

    assert (outcome.status, outcome.state) == ("applied", "succeeded")
    assert counters(job) == (JobState.PAUSED, 1, 0, 0)


def test_pause_of_finished_job_and_resume_of_unpaused_job_are_refused(one_task, operator):
    task = one_task("queued")
    with pytest.raises(InvalidTransition):
        actions.resume_job(task.job_id, operator)

    actions.cancel_task(task.pk, operator)

    with pytest.raises(InvalidTransition):
        actions.pause_job(task.job_id, operator)


# --- retry --------------------------------------------------------------------------


@pytest.fixture
def failed_job(make_agent, spec, operator, frozen_clock):
    """A finished job of four single-attempt tasks: a1 succeeded, a2 and a3 failed, a4 timed out."""
    for agent_id in ("a1", "a2", "a3", "a4"):
        make_agent(agent_id)
    job, _ = actions.submit_job(spec(max_attempts=1, delivery_timeout_s=30), operator)
    tasks = {}
    for agent_id in ("a1", "a2", "a3", "a4"):
        (assignment,) = actions.claim_tasks(agent_id, 10)
        tasks[agent_id] = assignment.task_id
    send("a1", "succeeded", tasks["a1"], 1)
    send("a2", "failed", tasks["a2"], 1, error=ERROR)
    send("a3", "failed", tasks["a3"], 1, error=ERROR)
    frozen_clock.advance(31)
    actions.expire_leases()
    assert counters(job) == (JobState.FAILED, 1, 3, 0)
    return job, tasks


def test_retry_failed_queues_failed_and_timed_out_tasks_with_fresh_attempts(failed_job, operator, frozen_clock):
    job, tasks = failed_job

    count = actions.retry_failed(job.pk, operator)

    assert count == 3
    assert counters(job) == (JobState.RUNNING, 1, 0, 0)
    assert reload(job).finished_at is None
    for agent_id in ("a2", "a3", "a4"):
        task = Task.objects.get(pk=tasks[agent_id])
        assert (task.state, task.attempt, task.max_attempts) == (TaskState.QUEUED, 1, 2)
        assert task.not_before == frozen_clock()
        assert task.finished_at is None
        event = last_event(task.pk)
        assert (event.kind, event.to_state, event.attempt) == ("retried", "queued", 1)
    assert Task.objects.get(pk=tasks["a1"]).state == TaskState.SUCCEEDED
    assert {event.from_state for event in TaskEvent.objects.filter(kind="retried")} == {"failed", "timed_out"}


def test_retried_tasks_run_again_and_the_job_rolls_up_again(failed_job, operator, frozen_clock):
    job, _ = failed_job
    actions.retry_failed(job.pk, operator)

    for agent_id in ("a2", "a3", "a4"):
        (assignment,) = actions.claim_tasks(agent_id, 10)
        assert assignment.attempt == 2
        send(agent_id, "succeeded", assignment.task_id, 2)

    assert counters(job) == (JobState.SUCCEEDED, 4, 0, 0)


def test_retried_task_that_fails_again_ends_failed_after_its_fresh_attempts(failed_job, operator):
    job, tasks = failed_job
    actions.retry_failed(job.pk, operator, task_ids=[tasks["a2"]])

    (assignment,) = actions.claim_tasks("a2", 10)
    send("a2", "failed", assignment.task_id, 2, error=ERROR)

    assert Task.objects.get(pk=tasks["a2"]).state == TaskState.FAILED
    assert counters(job) == (JobState.FAILED, 1, 3, 0)


def test_retry_failed_subset_queues_only_those_tasks(failed_job, operator):
    job, tasks = failed_job

    count = actions.retry_failed(job.pk, operator, task_ids=[tasks["a3"], tasks["a1"]])

    assert count == 1  # a1 succeeded, so it is not retried
    assert Task.objects.get(pk=tasks["a3"]).state == TaskState.QUEUED
    assert Task.objects.get(pk=tasks["a2"]).state == TaskState.FAILED
    assert Task.objects.get(pk=tasks["a1"]).state == TaskState.SUCCEEDED
    assert counters(job) == (JobState.RUNNING, 1, 2, 0)


def test_retry_failed_of_canceled_job_is_refused(one_task, operator):
    task = one_task("queued")
    actions.cancel_job(task.job_id, operator)

    with pytest.raises(InvalidTransition):
        actions.retry_failed(task.job_id, operator)


def test_retry_task_queues_a_failed_task(failed_job, operator, frozen_clock):
    job, tasks = failed_job

    task = actions.retry_task(tasks["a2"], operator)

    assert (task.state, task.max_attempts, task.not_before) == (TaskState.QUEUED, 2, frozen_clock())
    assert counters(job) == (JobState.RUNNING, 1, 2, 0)
    assert [a.task_id for a in actions.claim_tasks("a2", 10)] == [tasks["a2"]]


def test_retry_task_queues_a_canceled_task(three_agent_job, operator):
    job, tasks = three_agent_job()
    actions.cancel_task(tasks["a1"].pk, operator, force=True)
    assert counters(job) == (JobState.RUNNING, 0, 0, 1)

    result = actions.retry_task(tasks["a1"].pk, operator)

    assert result.state == TaskState.QUEUED
    assert result.cancel_requested_at is None
    assert counters(job) == (JobState.RUNNING, 0, 0, 0)
    (assignment,) = actions.claim_tasks("a1", 10)
    assert (assignment.task_id, assignment.attempt) == (tasks["a1"].pk, 2)


def test_retry_task_of_task_in_canceled_job_is_refused(three_agent_job, operator):
    job, tasks = three_agent_job()
    actions.cancel_job(job.pk, operator, force=True)

    with pytest.raises(InvalidTransition):
        actions.retry_task(tasks["a1"].pk, operator)

    assert reload(tasks["a1"]).state == TaskState.CANCELED


@pytest.mark.parametrize("state", ["queued", "assigned", "running"])
def test_retry_task_of_open_task_is_refused(one_task, operator, state):
    task = one_task(state)

    with pytest.raises(InvalidTransition):
        actions.retry_task(task.pk, operator)

    assert reload(task).state == state


# --- abort on failure ratio ---------------------------------------------------------


@pytest.fixture
def abortable_job(make_agent, spec, operator, frozen_clock):
    """Five agents, one task each, one attempt; a1..a4 hold theirs, a5's stays queued (capacity 0)."""
    for agent_id in ("a1", "a2", "a3", "a4"):
        make_agent(agent_id, labels={"role": "web"})
    make_agent("a5", labels={"role": "web"}, max_concurrency=0)

    def make(**fields: Any) -> tuple[Job, dict[str, int]]:
        fields.setdefault("max_attempts", 1)
        job, _ = actions.submit_job(spec(target_labels={"role": "web"}, **fields), operator)
        for agent_id in ("a1", "a2", "a3", "a4"):
            actions.claim_tasks(agent_id, 10)
        return job, {str(task.agent_id): task.pk for task in Task.objects.filter(job=job)}

    return make


def test_job_aborts_when_failure_ratio_exceeded_after_enough_finished(abortable_job, frozen_clock):
    job, tasks = abortable_job(abort_failure_ratio=0.4, abort_min_finished=2)

    send("a1", "failed", tasks["a1"], 1, error=ERROR)
    assert reload(job).state == JobState.RUNNING  # 1 finished < 2

    send("a2", "failed", tasks["a2"], 1, error=ERROR)

    assert reload(job).state == JobState.ABORTED
    queued = Task.objects.get(pk=tasks["a5"])
    assert queued.state == TaskState.CANCELED
    assert as_dict(last_event(queued.pk).data)["reason"] == "job aborted: failure threshold"
    for agent_id in ("a3", "a4"):
        held = Task.objects.get(pk=tasks[agent_id])
        assert held.state == TaskState.ASSIGNED
        assert held.cancel_requested_at == frozen_clock()
        assert [m["task_id"] for m in cancel_messages(agent_id)] == [held.pk]
    assert counters(job) == (JobState.ABORTED, 0, 2, 1)


def test_aborted_job_finishes_when_its_held_tasks_end(abortable_job, frozen_clock):
    job, tasks = abortable_job(abort_failure_ratio=0.4, abort_min_finished=2)
    send("a1", "failed", tasks["a1"], 1, error=ERROR)
    send("a2", "failed", tasks["a2"], 1, error=ERROR)

    send("a3", "failed", tasks["a3"], 1, error=ERROR)
    send("a4", "succeeded", tasks["a4"], 1)

    job.refresh_from_db()
    assert (job.state, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (JobState.ABORTED, 1, 2, 2)
    assert job.finished_at == frozen_clock()


def test_job_aborted_by_its_last_task_is_finished(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    job, _ = actions.submit_job(spec(max_attempts=1, abort_failure_ratio=0.5), operator)
    (assignment,) = actions.claim_tasks("a1", 10)

    send("a1", "failed", assignment.task_id, 1, error=ERROR)

    job.refresh_from_db()
    assert job.state == JobState.ABORTED
    assert job.tasks_finished == job.tasks_total
    assert job.finished_at == frozen_clock()


def test_job_does_not_abort_while_failure_ratio_is_at_or_below_threshold(abortable_job):
    job, tasks = abortable_job(abort_failure_ratio=0.5, abort_min_finished=2)

    send("a1", "succeeded", tasks["a1"], 1)
    send("a2", "failed", tasks["a2"], 1, error=ERROR)  # 1/2 == 0.5, not above it

    assert reload(job).state == JobState.RUNNING
    assert Task.objects.get(pk=tasks["a5"]).state == TaskState.QUEUED


def test_job_does_not_abort_before_min_finished(abortable_job):
    job, tasks = abortable_job(abort_failure_ratio=0.1, abort_min_finished=3)

    send("a1", "failed", tasks["a1"], 1, error=ERROR)
    send("a2", "failed", tasks["a2"], 1, error=ERROR)

    assert reload(job).state == JobState.RUNNING


def test_retries_pending_do_not_count_towards_abort(abortable_job):
    job, tasks = abortable_job(abort_failure_ratio=0.1, abort_min_finished=1, max_attempts=3)

    send("a1", "failed", tasks["a1"], 1, error=ERROR)

    assert Task.objects.get(pk=tasks["a1"]).state == TaskState.QUEUED
    assert reload(job).state == JobState.RUNNING


# --- rollout limits -----------------------------------------------------------------


@pytest.fixture
def big_agent(make_agent, frozen_clock):
    return make_agent("a1", max_concurrency=100)


def submit_any(spec, operator, count: int, **fields: Any) -> Job:
    job, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=count, **fields), operator)
    return job


def test_max_in_flight_limits_tasks_held_at_once(big_agent, spec, operator):
    job = submit_any(spec, operator, 5, max_in_flight=2)

    first = actions.claim_tasks("a1", 10)
    assert len(first) == 2
    assert actions.claim_tasks("a1", 10) == []

    send("a1", "succeeded", first[0].task_id, 1)

    assert len(actions.claim_tasks("a1", 10)) == 1
    assert Task.objects.filter(job=job, state__in=HELD).count() == 2


def test_max_in_flight_applies_across_agents(make_agent, spec, operator, frozen_clock):
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id)
    actions.submit_job(spec(max_in_flight=1), operator)

    assert len(actions.claim_tasks("a1", 10)) == 1
    assert actions.claim_tasks("a2", 10) == []
    assert actions.claim_tasks("a3", 10) == []


def test_max_in_flight_percent_limits_tasks_held_at_once(big_agent, spec, operator):
    submit_any(spec, operator, 10, max_in_flight_percent=30)

    assert len(actions.claim_tasks("a1", 10)) == 3
    assert actions.claim_tasks("a1", 10) == []


def test_max_in_flight_percent_allows_at_least_one_task(big_agent, spec, operator):
    submit_any(spec, operator, 3, max_in_flight_percent=10)

    assert len(actions.claim_tasks("a1", 10)) == 1


def test_smaller_of_count_and_percent_limit_applies(big_agent, spec, operator):
    submit_any(spec, operator, 10, max_in_flight=4, max_in_flight_percent=50)
    assert len(actions.claim_tasks("a1", 20)) == 4


def test_in_flight_limit_of_one_job_does_not_hold_back_another(big_agent, spec, operator):
    limited = submit_any(spec, operator, 5, max_in_flight=1, priority=5)
    free = submit_any(spec, operator, 3)

    jobs = [a.job_id for a in actions.claim_tasks("a1", 10)]

    assert sorted(jobs) == sorted([limited.pk, free.pk, free.pk, free.pk])


def test_max_in_flight_holds_when_another_job_is_trimmed_in_the_same_claim(big_agent, spec, operator):
    """Claim fetches more rows after trimming one job; a job already seen must keep its limit in that round."""
    trimmed = submit_any(spec, operator, 2, max_in_flight=1, priority=10)
    limited = submit_any(spec, operator, 5, max_in_flight=2)

    jobs = [a.job_id for a in actions.claim_tasks("a1", 4)]

    assert jobs.count(trimmed.pk) == 1
    assert jobs.count(limited.pk) == 2
    assert Task.objects.filter(job=limited, state__in=HELD).count() == 2


def test_rate_per_minute_holds_when_another_job_is_trimmed_in_the_same_claim(big_agent, spec, operator, frozen_clock):
    trimmed = submit_any(spec, operator, 2, rate_per_minute=1, priority=10)
    limited = submit_any(spec, operator, 5, rate_per_minute=2)

    jobs = [a.job_id for a in actions.claim_tasks("a1", 4)]

    assert jobs.count(trimmed.pk) == 1
    assert jobs.count(limited.pk) == 1  # 2 a minute: one now, the next 30 s later
    frozen_clock.advance(29)
    assert actions.claim_tasks("a1", 10) == []
    frozen_clock.advance(1)
    assert [a.job_id for a in actions.claim_tasks("a1", 10)] == [limited.pk]


def test_rate_per_minute_spreads_assignments_over_the_minute(big_agent, spec, operator, frozen_clock):
    job = submit_any(spec, operator, 5, rate_per_minute=2)

    first = actions.claim_tasks("a1", 10)
    assert len(first) == 1  # not the minute's whole budget at once
    send("a1", "succeeded", first[0].task_id, 1)

    assert actions.claim_tasks("a1", 10) == []  # nothing in flight, but the next token is 30 s away
    frozen_clock.advance(29)
    assert actions.claim_tasks("a1", 10) == []

    frozen_clock.advance(1)
    assert len(actions.claim_tasks("a1", 10)) == 1
    assert actions.claim_tasks("a1", 10) == []

    frozen_clock.advance(120)  # a long pause does not save up a burst: the bucket holds one token
    assert len(actions.claim_tasks("a1", 10)) == 1
    assert actions.claim_tasks("a1", 10) == []
    frozen_clock.advance(30)
    assert len(actions.claim_tasks("a1", 10)) == 1
    assert Task.objects.filter(job=job, state=TaskState.QUEUED).count() == 1


def test_rate_per_minute_above_one_a_second_starts_a_second_s_worth_at_once(big_agent, spec, operator, frozen_clock):
    big_agent.max_concurrency = 1000
    big_agent.save()
    submit_any(spec, operator, 500, rate_per_minute=600)

    assert len(actions.claim_tasks("a1", 1000)) == 10  # 600 a minute: 10 a second
    frozen_clock.advance(0.5)
    assert len(actions.claim_tasks("a1", 1000)) == 5


def test_rate_per_minute_counts_claims_by_every_agent(make_agent, spec, operator, frozen_clock):
    for agent_id in ("a1", "a2", "a3"):
        make_agent(agent_id)
    actions.submit_job(spec(rate_per_minute=2), operator)

    assert len(actions.claim_tasks("a1", 10)) == 1
    assert actions.claim_tasks("a2", 10) == []
    frozen_clock.advance(30)
    assert len(actions.claim_tasks("a2", 10)) == 1
    assert actions.claim_tasks("a3", 10) == []
    frozen_clock.advance(30)
    assert len(actions.claim_tasks("a3", 10)) == 1


# --- audit --------------------------------------------------------------------------


def test_every_operator_action_on_a_task_is_audited(one_task, operator):
    task = one_task("running", max_attempts=1)
    send("a1", "failed", task.pk, 1, error=ERROR)
    actions.retry_task(task.pk, operator)
    actions.claim_tasks("a1", 10)
    actions.cancel_task(task.pk, operator)
    actions.cancel_task(task.pk, operator, force=True)

    assert audit_actions("task", task.pk) == ["task.retry", "task.cancel", "task.cancel"]
    rows = list(AuditEvent.objects.filter(object_type="task", object_id=str(task.pk)).order_by("id"))
    assert {row.actor_label for row in rows} == {"tester"}
    assert [row.data.get("force") for row in rows[1:]] == [False, True]


def test_every_operator_action_on_a_job_is_audited(failed_job, operator):
    job, tasks = failed_job
    actions.retry_failed(job.pk, operator, task_ids=[tasks["a2"]])
    actions.pause_job(job.pk, operator)
    actions.resume_job(job.pk, operator)
    actions.cancel_job(job.pk, operator)

    assert audit_actions("job", job.pk) == ["job.submit", "job.retry_failed", "job.pause", "job.resume", "job.cancel"]
    retry = AuditEvent.objects.get(action="job.retry_failed")
    assert (retry.actor_label, retry.data["tasks"], retry.data["subset"]) == ("tester", 1, [tasks["a2"]])


def test_refused_operator_action_is_not_audited(one_task, operator):
    task = one_task("queued")
    actions.cancel_task(task.pk, operator)
    before = AuditEvent.objects.count()

    with pytest.raises(InvalidTransition):
        actions.cancel_task(task.pk, operator)

    assert AuditEvent.objects.count() == before


def test_the_dispatcher_wakes_when_the_next_rate_token_is_due(big_agent, spec, operator, frozen_clock):
    """Nothing NOTIFYs a token coming due: a dispatcher sleeping its whole poll claimed each token late (~40/min)."""
    from tasks.dispatcher import Dispatcher

    dispatcher = Dispatcher(poll_interval=5.0)
    assert dispatcher.next_rate_token_in() == 5.0  # no rate-limited job: the poll interval
    submit_any(spec, operator, 5, rate_per_minute=60)
    assert len(actions.claim_tasks("a1", 10)) == 1
    assert dispatcher.next_rate_token_in() == pytest.approx(1.0)
    frozen_clock.advance(0.75)
    assert dispatcher.next_rate_token_in() == pytest.approx(0.25)
    frozen_clock.advance(0.25)
    assert len(actions.claim_tasks("a1", 10)) == 1  # due exactly then
