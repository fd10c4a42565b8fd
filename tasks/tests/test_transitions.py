"""The task state machine: each transition, its history row, and what it does to the job."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from tasks import actions
from tasks.engine.reports import Outcome, Report
from tasks.models import Job, JobMode, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON field that must hold an object here."""
    assert isinstance(value, dict), value
    return value


def send(agent_id: str, kind: str, task_id: int, attempt: int, **fields: Any) -> Outcome:
    return actions.report(agent_id, Report(kind, task_id, attempt, message_id=uuid.uuid4().hex, **fields))


def task_of(job: Job) -> Task:
    (task,) = Task.objects.filter(job=job)
    return task


def history(task_id: int) -> list[tuple[str, str, str, int]]:
    return list(
        TaskEvent.objects.filter(task_id=task_id)
        .order_by("id")
        .values_list("kind", "from_state", "to_state", "attempt")
    )


def last_event(task_id: int) -> TaskEvent:
    return TaskEvent.objects.filter(task_id=task_id).latest("id")


@pytest.fixture
def agent(make_agent, frozen_clock):
    return make_agent("a1")


@pytest.fixture
def submit(spec, operator, agent):
    """Submit a job pinned to ``a1`` and return it."""

    def make(**fields: Any) -> Job:
        fields.setdefault("target_agent_ids", ["a1"])
        job, created = actions.submit_job(spec(**fields), operator)
        assert created
        return job

    return make


def claimed(job: Job, agent_id: str = "a1") -> Task:
    (assignment,) = actions.claim_tasks(agent_id, 10)
    assert assignment.job_id == job.pk
    return Task.objects.get(pk=assignment.task_id)


def running(job: Job, agent_id: str = "a1") -> Task:
    task = claimed(job, agent_id)
    assert send(agent_id, "accepted", task.pk, task.attempt).status == "applied"
    task.refresh_from_db()
    return task


# --- queued -------------------------------------------------------------------------


def test_submitted_task_is_queued_with_a_created_event(submit):
    job = submit()
    task = task_of(job)

    assert task.state == TaskState.QUEUED
    assert task.attempt == 0
    assert history(task.pk) == [("created", "", "queued", 0)]


def test_claim_assigns_queued_task_with_first_attempt_and_delivery_lease(submit, frozen_clock):
    job = submit(delivery_timeout_s=30, execution_timeout_s=300, payload={"cmd": "ls"})

    (assignment,) = actions.claim_tasks("a1", 10)

    task = Task.objects.get(pk=assignment.task_id)
    assert task.state == TaskState.ASSIGNED
    assert task.agent_id == "a1"
    assert task.attempt == 1
    assert task.assigned_at == frozen_clock()
    assert task.lease_expires_at == frozen_clock() + timedelta(seconds=30)
    assert (assignment.attempt, assignment.job_id, assignment.kind) == (1, job.pk, "echo")
    assert (assignment.payload, assignment.timeout_s, assignment.lease_s) == ({"cmd": "ls"}, 300, 30)
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state, event.attempt) == ("assigned", "queued", "assigned", 1)
    assert event.agent_id == "a1"


def test_first_claim_moves_job_from_scheduled_to_running(submit):
    job = submit()
    assert job.state == JobState.SCHEDULED

    claimed(job)

    job.refresh_from_db()
    assert job.state == JobState.RUNNING


# --- assigned -----------------------------------------------------------------------


def test_accepted_report_starts_task_with_execution_lease(submit, frozen_clock):
    job = submit(delivery_timeout_s=30, execution_timeout_s=300)
    task = claimed(job)
    frozen_clock.advance(5)

    outcome = send("a1", "accepted", task.pk, 1)

    assert (outcome.status, outcome.state) == ("applied", "running")
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    assert task.started_at == frozen_clock()
    assert task.lease_expires_at == frozen_clock() + timedelta(seconds=300)
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state, event.attempt) == ("accepted", "assigned", "running", 1)
    assert event.agent_id == "a1"


def test_progress_on_assigned_task_starts_it(submit):
    job = submit()
    task = claimed(job)

    send("a1", "progress", task.pk, 1, progress={"pct": 10})

    task.refresh_from_db()
    assert task.state == TaskState.RUNNING
    assert task.progress == {"pct": 10}
    assert history(task.pk)[-1] == ("progress", "assigned", "running", 1)


def test_success_reported_straight_from_assigned_finishes_task(submit, frozen_clock):
    job = submit()
    task = claimed(job)
    frozen_clock.advance(2)

    outcome = send("a1", "succeeded", task.pk, 1, result={"ok": True})

    assert (outcome.status, outcome.state) == ("applied", "succeeded")
    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED
    assert task.result == {"ok": True}
    assert task.started_at == task.finished_at == frozen_clock()
    assert task.lease_expires_at is None
    assert history(task.pk)[-1] == ("succeeded", "assigned", "succeeded", 1)


# --- running ------------------------------------------------------------------------


def test_success_report_finishes_running_task_with_result(submit, frozen_clock):
    job = submit()
    task = running(job)
    started = task.started_at
    frozen_clock.advance(7)

    send("a1", "succeeded", task.pk, 1, result={"lines": 3})

    task.refresh_from_db()
    assert task.state == TaskState.SUCCEEDED
    assert task.result == {"lines": 3}
    assert task.started_at == started
    assert task.finished_at == frozen_clock()
    assert task.lease_expires_at is None
    assert history(task.pk)[-1] == ("succeeded", "running", "succeeded", 1)


def test_progress_is_stored_and_extends_the_execution_lease(submit, frozen_clock):
    job = submit(execution_timeout_s=100)
    task = running(job)
    first_lease = task.lease_expires_at
    frozen_clock.advance(80)

    send("a1", "progress", task.pk, 1, progress={"pct": 50})

    task.refresh_from_db()
    assert task.progress == {"pct": 50}
    assert task.lease_expires_at == frozen_clock() + timedelta(seconds=100)
    assert history(task.pk)[-1] == ("progress", "running", "running", 1)
    assert last_event(task.pk).data == {"pct": 50}

    frozen_clock.advance(30)  # past the first lease, inside the extended one
    assert frozen_clock() > first_lease
    assert actions.expire_leases() == 0
    task.refresh_from_db()
    assert task.state == TaskState.RUNNING

    frozen_clock.advance(71)  # past the extended lease
    assert actions.expire_leases() == 1


def test_failure_with_attempts_left_requeues_task_with_backoff(submit, frozen_clock):
    job = submit(max_attempts=3, backoff_base_s=10, backoff_cap_s=100)
    task = running(job)
    frozen_clock.advance(3)
    error = {"code": "E1", "message": "boom"}

    outcome = send("a1", "failed", task.pk, 1, error=error)

    assert (outcome.status, outcome.state) == ("applied", "queued")
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert task.error == error
    assert task.lease_expires_at is None
    assert task.finished_at is None
    assert task.agent_id == "a1"  # pinned: the retry waits for the same agent
    assert frozen_clock() + timedelta(seconds=5) <= task.not_before <= frozen_clock() + timedelta(seconds=10)
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state, event.attempt) == ("failed", "running", "queued", 1)
    assert as_dict(event.data)["error"] == error
    assert as_dict(event.data)["retry_at"] == task.not_before.isoformat()
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    assert (job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (0, 0, 0)


def test_requeued_task_runs_again_with_the_next_attempt(submit, frozen_clock):
    job = submit(max_attempts=3)
    task = running(job)
    send("a1", "failed", task.pk, 1, error={"code": "E1", "message": "boom"})
    frozen_clock.advance(100)

    (assignment,) = actions.claim_tasks("a1", 10)

    assert assignment.attempt == 2
    task.refresh_from_db()
    assert (task.state, task.attempt, task.error) == (TaskState.ASSIGNED, 2, None)
    assert history(task.pk)[-1] == ("assigned", "queued", "assigned", 2)


def test_failure_on_last_attempt_ends_task_failed(submit, frozen_clock):
    job = submit(max_attempts=1)
    task = running(job)
    frozen_clock.advance(4)

    outcome = send("a1", "failed", task.pk, 1, error={"code": "E1", "message": "boom"})

    assert (outcome.status, outcome.state) == ("applied", "failed")
    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert task.finished_at == frozen_clock()
    assert task.error == {"code": "E1", "message": "boom"}
    assert history(task.pk)[-1] == ("failed", "running", "failed", 1)


def test_failure_marked_not_retryable_ends_task_at_once(submit):
    job = submit(max_attempts=5)
    task = running(job)

    send("a1", "failed", task.pk, 1, error={"code": "BAD_INPUT", "message": "no"}, retryable=False)

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert task.attempt == 1
    assert history(task.pk)[-1] == ("failed", "running", "failed", 1)
    assert as_dict(last_event(task.pk).data)["retryable"] is False


def test_rejected_task_is_queued_again_with_rejected_error(submit, frozen_clock):
    job = submit(max_attempts=3)
    task = claimed(job)

    outcome = send("a1", "rejected", task.pk, 1, reason="disk full")

    assert (outcome.status, outcome.state) == ("applied", "queued")
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert task.error == {"code": "rejected", "message": "disk full"}
    assert task.not_before > frozen_clock()
    assert history(task.pk)[-1] == ("rejected", "assigned", "queued", 1)


def test_rejection_on_last_attempt_ends_task_failed(submit):
    job = submit(max_attempts=1)
    task = claimed(job)

    send("a1", "rejected", task.pk, 1)

    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    assert as_dict(task.error)["code"] == "rejected"
    assert history(task.pk)[-1] == ("rejected", "assigned", "failed", 1)
    job.refresh_from_db()
    assert (job.state, job.tasks_failed) == (JobState.FAILED, 1)


# --- leases -------------------------------------------------------------------------


def test_assigned_task_is_not_expired_before_its_delivery_lease_ends(submit, frozen_clock):
    job = submit(delivery_timeout_s=30)
    task = claimed(job)
    frozen_clock.advance(29)

    assert actions.expire_leases() == 0
    task.refresh_from_db()
    assert task.state == TaskState.ASSIGNED


def test_delivery_timeout_requeues_assigned_task(submit, frozen_clock):
    job = submit(delivery_timeout_s=30, max_attempts=2)
    task = claimed(job)
    frozen_clock.advance(31)

    assert actions.expire_leases() == 1

    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert task.lease_expires_at is None
    assert as_dict(task.error)["code"] == "delivery_timeout"
    assert task.not_before > frozen_clock()
    event = last_event(task.pk)
    assert (event.kind, event.from_state, event.to_state, event.attempt) == (
        "delivery_timeout",
        "assigned",
        "queued",
        1,
    )
    assert event.agent_id == "a1"
    assert as_dict(event.data)["retry_at"] == task.not_before.isoformat()


def test_delivery_timeout_on_last_attempt_ends_task_timed_out(submit, frozen_clock):
    job = submit(delivery_timeout_s=30, max_attempts=1)
    task = claimed(job)
    frozen_clock.advance(31)

    actions.expire_leases()

    task.refresh_from_db()
    assert task.state == TaskState.TIMED_OUT
    assert task.finished_at == frozen_clock()
    assert history(task.pk)[-1] == ("delivery_timeout", "assigned", "timed_out", 1)
    job.refresh_from_db()
    assert (job.state, job.tasks_failed) == (JobState.FAILED, 1)


def test_execution_timeout_requeues_running_task(submit, frozen_clock):
    job = submit(execution_timeout_s=100, max_attempts=2)
    task = running(job)
    frozen_clock.advance(101)

    assert actions.expire_leases() == 1

    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert as_dict(task.error)["code"] == "execution_timeout"
    assert history(task.pk)[-1] == ("execution_timeout", "running", "queued", 1)


def test_execution_timeout_on_last_attempt_ends_task_timed_out(submit, frozen_clock):
    job = submit(execution_timeout_s=100, max_attempts=1)
    task = running(job)
    frozen_clock.advance(101)

    actions.expire_leases()

    task.refresh_from_db()
    assert task.state == TaskState.TIMED_OUT
    assert history(task.pk)[-1] == ("execution_timeout", "running", "timed_out", 1)


def test_expire_leases_handles_only_expired_tasks(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    make_agent("a2")
    short, _ = actions.submit_job(spec(target_agent_ids=["a1"], delivery_timeout_s=10), operator)
    long, _ = actions.submit_job(spec(target_agent_ids=["a2"], delivery_timeout_s=100), operator)
    actions.claim_tasks("a1", 10)
    actions.claim_tasks("a2", 10)
    frozen_clock.advance(11)

    assert actions.expire_leases() == 1

    assert task_of(short).state == TaskState.QUEUED
    assert task_of(long).state == TaskState.ASSIGNED


# --- one task's whole life ------------------------------------------------------------


def test_every_transition_of_a_task_is_one_history_row(submit, frozen_clock):
    job = submit(max_attempts=3, delivery_timeout_s=30)
    task = running(job)
    send("a1", "failed", task.pk, 1, error={"code": "E", "message": "x"})
    frozen_clock.advance(100)
    actions.claim_tasks("a1", 10)
    frozen_clock.advance(31)
    actions.expire_leases()
    frozen_clock.advance(100)
    actions.claim_tasks("a1", 10)
    send("a1", "accepted", task.pk, 3)
    send("a1", "progress", task.pk, 3, progress={"pct": 99})
    send("a1", "succeeded", task.pk, 3, result={})

    assert history(task.pk) == [
        ("created", "", "queued", 0),
        ("assigned", "queued", "assigned", 1),
        ("accepted", "assigned", "running", 1),
        ("failed", "running", "queued", 1),
        ("assigned", "queued", "assigned", 2),
        ("delivery_timeout", "assigned", "queued", 2),
        ("assigned", "queued", "assigned", 3),
        ("accepted", "assigned", "running", 3),
        ("progress", "running", "running", 3),
        ("succeeded", "running", "succeeded", 3),
    ]
    job.refresh_from_db()
    assert (job.state, job.tasks_succeeded, job.tasks_failed) == (JobState.SUCCEEDED, 1, 0)


def test_unpinned_task_requeued_after_failure_loses_its_agent(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    make_agent("a2")
    actions.submit_job(spec(mode=JobMode.ANY, task_count=1, max_attempts=2), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    send("a1", "failed", assignment.task_id, 1, error={"code": "E", "message": "x"})
    frozen_clock.advance(100)

    (second,) = actions.claim_tasks("a2", 10)

    assert (second.task_id, second.attempt) == (assignment.task_id, 2)
    assert Task.objects.get(pk=assignment.task_id).agent_id == "a2"


# --- job counters and roll-up ---------------------------------------------------------


@pytest.fixture
def two_agent_job(make_agent, spec, operator, frozen_clock):
    make_agent("a1", labels={"role": "web"})
    make_agent("a2", labels={"role": "web"})
    job, _ = actions.submit_job(spec(target_labels={"role": "web"}, max_attempts=1), operator)
    tasks = {}
    for agent_id in ("a1", "a2"):
        (assignment,) = actions.claim_tasks(agent_id, 10)
        tasks[agent_id] = assignment.task_id
    return job, tasks


def test_job_succeeds_when_all_tasks_succeed(two_agent_job, frozen_clock):
    job, tasks = two_agent_job
    send("a1", "succeeded", tasks["a1"], 1)
    job.refresh_from_db()
    assert (job.state, job.tasks_succeeded, job.finished_at) == (JobState.RUNNING, 1, None)

    frozen_clock.advance(5)
    send("a2", "succeeded", tasks["a2"], 1)

    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert (job.tasks_total, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (2, 2, 0, 0)
    assert job.finished_at == frozen_clock()


def test_job_fails_when_any_task_fails(two_agent_job):
    job, tasks = two_agent_job
    send("a1", "succeeded", tasks["a1"], 1)
    send("a2", "failed", tasks["a2"], 1, error={"code": "E", "message": "x"})

    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert (job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (1, 1, 0)
    assert job.finished_at is not None


def test_timed_out_task_counts_as_failed_in_its_job(two_agent_job, frozen_clock):
    job, tasks = two_agent_job
    send("a1", "succeeded", tasks["a1"], 1)
    frozen_clock.advance(10_000)
    actions.expire_leases()

    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert (job.tasks_succeeded, job.tasks_failed) == (1, 1)


def test_job_with_canceled_and_succeeded_tasks_succeeds(two_agent_job, operator):
    job, tasks = two_agent_job
    send("a1", "succeeded", tasks["a1"], 1)
    actions.cancel_task(tasks["a2"], operator, force=True)

    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert (job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (1, 0, 1)


def test_job_with_only_canceled_tasks_is_canceled(two_agent_job, operator):
    job, tasks = two_agent_job
    actions.cancel_task(tasks["a1"], operator, force=True)
    actions.cancel_task(tasks["a2"], operator, force=True)

    job.refresh_from_db()
    assert job.state == JobState.CANCELED
    assert (job.tasks_canceled, job.tasks_finished) == (2, 2)
    assert job.finished_at is not None


def test_job_with_zero_matching_agents_ends_empty_at_once_never_succeeded(make_agent, spec, operator, frozen_clock):
    make_agent("a1", labels={"role": "db"})

    job, created = actions.submit_job(spec(target_labels={"role": "web"}, allow_no_agents=True), operator)

    assert created
    job.refresh_from_db()
    assert job.tasks_total == 0
    assert job.state == JobState.EMPTY
    assert job.get_state_display() == "no tasks"
    assert job.finished_at == frozen_clock()
    assert not Task.objects.filter(job=job).exists()


def test_continuous_job_with_zero_matching_agents_stays_open(make_agent, spec, operator, frozen_clock):
    make_agent("a1", labels={"role": "db"})

    job, _ = actions.submit_job(spec(target_labels={"role": "web"}, continuous=True), operator)

    job.refresh_from_db()
    assert job.state == JobState.SCHEDULED
    assert job.finished_at is None
