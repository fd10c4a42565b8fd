"""Attempt fencing and deduplication: late, foreign or repeated reports never change a task twice."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tasks import actions
from tasks.engine.reports import Outcome, Report
from tasks.models import Job, JobMode, JobState, Task, TaskEvent, TaskState

pytestmark = pytest.mark.django_db

REPORT_KINDS = ["accepted", "progress", "succeeded", "failed", "rejected"]
TASK_FIELDS = ("state", "agent_id", "attempt", "lease_expires_at", "not_before", "result", "error", "progress")


def as_dict(value: Any) -> dict[str, Any]:
    """A JSON field that must hold an object here."""
    assert isinstance(value, dict), value
    return value


def send(agent_id: str, kind: str, task_id: int, attempt: int, message_id: str | None = None, **fields: Any) -> Outcome:
    return actions.report(agent_id, Report(kind, task_id, attempt, message_id=message_id or uuid.uuid4().hex, **fields))


def payload_for(kind: str) -> dict[str, Any]:
    payloads: dict[str, dict[str, Any]] = {
        "accepted": {},
        "progress": {"progress": {"pct": 1}},
        "succeeded": {"result": {"late": True}},
        "failed": {"error": {"code": "LATE", "message": "late"}},
        "rejected": {"reason": "late"},
    }
    return payloads[kind]


def snapshot(task_id: int) -> dict[str, Any]:
    return Task.objects.filter(pk=task_id).values(*TASK_FIELDS).get()


def job_counters(job_id: int) -> tuple[str, int, int, int]:
    job = Job.objects.get(pk=job_id)
    return job.state, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled


def stale_events(task_id: int) -> list[TaskEvent]:
    return list(TaskEvent.objects.filter(task_id=task_id, kind="stale").order_by("id"))


@pytest.fixture
def pinned_task(make_agent, spec, operator, frozen_clock):
    """A pinned task of a1 whose first attempt timed out in delivery and whose second attempt is running."""
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=3, delivery_timeout_s=30), operator)
    (first,) = actions.claim_tasks("a1", 10)
    frozen_clock.advance(31)
    actions.expire_leases()
    frozen_clock.advance(100)
    (second,) = actions.claim_tasks("a1", 10)
    assert (first.task_id, first.attempt, second.attempt) == (second.task_id, 1, 2)
    send("a1", "accepted", second.task_id, 2)
    return Task.objects.get(pk=second.task_id)


@pytest.fixture
def moved_task(make_agent, spec, operator, frozen_clock):
    """An 'any' task: a1 held attempt 1 until its lease ran out, now a2 runs attempt 2."""
    make_agent("a1")
    make_agent("a2")
    make_agent("a3")
    actions.submit_job(spec(mode=JobMode.ANY, task_count=1, delivery_timeout_s=30), operator)
    (first,) = actions.claim_tasks("a1", 10)
    frozen_clock.advance(31)
    actions.expire_leases()
    frozen_clock.advance(100)
    (second,) = actions.claim_tasks("a2", 10)
    assert (first.task_id, second.attempt) == (second.task_id, 2)
    send("a2", "accepted", second.task_id, 2)
    return Task.objects.get(pk=second.task_id)


# --- older attempt ------------------------------------------------------------------


@pytest.mark.parametrize("kind", REPORT_KINDS)
def test_report_for_old_attempt_changes_nothing(pinned_task, kind):
    before = snapshot(pinned_task.pk)
    counters = job_counters(pinned_task.job_id)

    outcome = send("a1", kind, pinned_task.pk, 1, **payload_for(kind))

    assert outcome.status == "stale"
    assert outcome.state == "running"
    assert snapshot(pinned_task.pk) == before
    assert job_counters(pinned_task.job_id) == counters


def test_result_for_old_attempt_is_recorded_as_stale_event(pinned_task, frozen_clock):
    send("a1", "succeeded", pinned_task.pk, 1, message_id="late-1", result={"x": 1})

    (event,) = stale_events(pinned_task.pk)
    assert event.attempt == 1
    assert (event.from_state, event.to_state) == ("running", "running")
    assert event.agent_id == "a1"
    assert event.message_id == "late-1"
    assert event.created_at == frozen_clock()
    assert as_dict(event.data)["report"] == "succeeded"
    assert "attempt 1" in as_dict(event.data)["reason"]


def test_current_attempt_still_applies_after_a_stale_report(pinned_task):
    send("a1", "succeeded", pinned_task.pk, 1, result={"old": True})

    outcome = send("a1", "succeeded", pinned_task.pk, 2, result={"new": True})

    assert (outcome.status, outcome.state) == ("applied", "succeeded")
    task = Task.objects.get(pk=pinned_task.pk)
    assert task.result == {"new": True}


def test_report_for_future_attempt_changes_nothing(pinned_task):
    before = snapshot(pinned_task.pk)

    outcome = send("a1", "succeeded", pinned_task.pk, 3, result={})

    assert outcome.status == "stale"
    assert snapshot(pinned_task.pk) == before


# --- another agent ------------------------------------------------------------------


@pytest.mark.parametrize("kind", REPORT_KINDS)
def test_report_from_agent_that_lost_the_task_changes_nothing(moved_task, kind):
    before = snapshot(moved_task.pk)
    counters = job_counters(moved_task.job_id)

    outcome = send("a1", kind, moved_task.pk, 1, **payload_for(kind))

    assert outcome.status == "stale"
    assert snapshot(moved_task.pk) == before
    assert before["agent_id"] == "a2"
    assert job_counters(moved_task.job_id) == counters
    (event,) = stale_events(moved_task.pk)
    assert (event.agent_id, event.attempt) == ("a1", 1)
    assert as_dict(event.data)["report"] == kind
    assert "no longer held" in as_dict(event.data)["reason"]


def test_report_from_agent_that_lost_the_task_while_it_waits_in_queue_changes_nothing(
    make_agent, spec, operator, frozen_clock
):
    make_agent("a1")
    actions.submit_job(spec(mode=JobMode.ANY, task_count=1, max_attempts=2), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    send("a1", "rejected", assignment.task_id, 1)
    before = snapshot(assignment.task_id)
    assert (before["state"], before["agent_id"]) == ("queued", None)

    outcome = send("a1", "succeeded", assignment.task_id, 1, result={})

    assert outcome.status == "stale"
    assert snapshot(assignment.task_id) == before


@pytest.mark.parametrize("kind", REPORT_KINDS)
def test_report_from_agent_that_never_held_the_task_is_not_found_and_writes_nothing(moved_task, kind):
    before = snapshot(moved_task.pk)
    events_before = TaskEvent.objects.count()

    outcome = send("a3", kind, moved_task.pk, 2, **payload_for(kind))

    assert outcome.status == "not_found"
    assert snapshot(moved_task.pk) == before
    assert TaskEvent.objects.count() == events_before


def test_report_for_pinned_task_of_another_agent_is_not_found(pinned_task, make_agent):
    make_agent("intruder")
    events_before = TaskEvent.objects.count()

    outcome = send("intruder", "succeeded", pinned_task.pk, 2, result={})

    assert outcome.status == "not_found"
    assert Task.objects.get(pk=pinned_task.pk).state == TaskState.RUNNING
    assert TaskEvent.objects.count() == events_before


def test_report_for_unknown_task_is_not_found(make_agent, frozen_clock):
    make_agent("a1")

    outcome = send("a1", "succeeded", 999_999, 1, result={})

    assert outcome.status == "not_found"
    assert not TaskEvent.objects.exists()


# --- terminal tasks -----------------------------------------------------------------


@pytest.fixture
def single_task(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=1, delivery_timeout_s=30), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    return Task.objects.get(pk=assignment.task_id)


def _finish(task: Task, how: str, operator, frozen_clock) -> None:
    if how == "succeeded":
        send("a1", "succeeded", task.pk, 1, result={"first": True})
    elif how == "failed":
        send("a1", "failed", task.pk, 1, error={"code": "E", "message": "x"})
    elif how == "timed_out":
        frozen_clock.advance(31)
        actions.expire_leases()
    else:
        actions.cancel_task(task.pk, operator, force=True)
    assert Task.objects.get(pk=task.pk).state == how


@pytest.mark.parametrize("kind", REPORT_KINDS)
@pytest.mark.parametrize("terminal", ["succeeded", "failed", "timed_out", "canceled"])
def test_report_for_terminal_task_changes_nothing(single_task, operator, frozen_clock, terminal, kind):
    _finish(single_task, terminal, operator, frozen_clock)
    before = snapshot(single_task.pk)
    counters = job_counters(single_task.job_id)

    outcome = send("a1", kind, single_task.pk, 1, **payload_for(kind))

    assert (outcome.status, outcome.state) == ("stale", terminal)
    assert snapshot(single_task.pk) == before
    assert job_counters(single_task.job_id) == counters
    (event,) = stale_events(single_task.pk)
    assert (event.from_state, event.to_state, event.attempt) == (terminal, terminal, 1)
    assert as_dict(event.data)["report"] == kind
    assert terminal in as_dict(event.data)["reason"]


def test_second_accepted_for_running_task_is_stale_and_keeps_the_lease(single_task, frozen_clock):
    send("a1", "accepted", single_task.pk, 1)
    before = snapshot(single_task.pk)
    frozen_clock.advance(20)

    outcome = send("a1", "accepted", single_task.pk, 1)

    assert outcome.status == "stale"
    assert "accepted" in outcome.detail
    assert snapshot(single_task.pk) == before


# --- duplicated messages ------------------------------------------------------------


def test_duplicated_result_message_is_applied_once(single_task):
    first = send("a1", "succeeded", single_task.pk, 1, message_id="m-1", result={"n": 1})
    again = send("a1", "succeeded", single_task.pk, 1, message_id="m-1", result={"n": 1})

    assert first.status == "applied"
    assert again.status == "duplicate"
    assert TaskEvent.objects.filter(message_id="m-1").count() == 1
    assert not stale_events(single_task.pk)
    assert job_counters(single_task.job_id) == (JobState.SUCCEEDED, 1, 0, 0)


def test_duplicated_progress_message_does_not_extend_the_lease_again(single_task, frozen_clock):
    send("a1", "accepted", single_task.pk, 1)
    send("a1", "progress", single_task.pk, 1, message_id="p-1", progress={"pct": 5})
    lease = Task.objects.get(pk=single_task.pk).lease_expires_at
    frozen_clock.advance(60)

    outcome = send("a1", "progress", single_task.pk, 1, message_id="p-1", progress={"pct": 5})

    assert outcome.status == "duplicate"
    assert Task.objects.get(pk=single_task.pk).lease_expires_at == lease
    assert TaskEvent.objects.filter(task_id=single_task.pk, kind="progress").count() == 1


def test_duplicated_failure_message_does_not_spend_a_second_attempt(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], max_attempts=3), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    send("a1", "failed", assignment.task_id, 1, message_id="f-1", error={"code": "E", "message": "x"})
    frozen_clock.advance(100)
    actions.claim_tasks("a1", 10)
    before = snapshot(assignment.task_id)

    outcome = send("a1", "failed", assignment.task_id, 1, message_id="f-1", error={"code": "E", "message": "x"})

    assert outcome.status == "duplicate"
    assert snapshot(assignment.task_id) == before
    assert before["attempt"] == 2


def test_message_repeated_within_one_batch_is_applied_once(single_task):
    batch = [
        Report("succeeded", single_task.pk, 1, message_id="m-2", result={"n": 1}),
        Report("succeeded", single_task.pk, 1, message_id="m-2", result={"n": 1}),
    ]

    outcomes = actions.apply_reports("a1", batch)

    assert [o.status for o in outcomes] == ["applied", "duplicate"]
    assert TaskEvent.objects.filter(message_id="m-2").count() == 1
    assert job_counters(single_task.job_id) == (JobState.SUCCEEDED, 1, 0, 0)


def test_repeated_stale_message_is_recorded_once(pinned_task):
    first = send("a1", "succeeded", pinned_task.pk, 1, message_id="s-1", result={})
    again = send("a1", "succeeded", pinned_task.pk, 1, message_id="s-1", result={})

    assert (first.status, again.status) == ("stale", "duplicate")
    assert len(stale_events(pinned_task.pk)) == 1


def test_reports_without_message_id_are_each_applied(single_task):
    batch = [
        Report("accepted", single_task.pk, 1),
        Report("progress", single_task.pk, 1, progress={"pct": 1}),
        Report("progress", single_task.pk, 1, progress={"pct": 2}),
    ]

    outcomes = actions.apply_reports("a1", batch)

    assert [o.status for o in outcomes] == ["applied", "applied", "applied"]
    assert Task.objects.get(pk=single_task.pk).progress == {"pct": 2}


# --- batches ------------------------------------------------------------------------


def test_batch_applies_reports_in_order_and_fences_each_one(single_task):
    batch = [
        Report("accepted", single_task.pk, 1, message_id="b-1"),
        Report("progress", single_task.pk, 1, message_id="b-2", progress={"pct": 50}),
        Report("succeeded", single_task.pk, 1, message_id="b-3", result={"done": 1}),
        Report("failed", single_task.pk, 1, message_id="b-4", error={"code": "E", "message": "late"}),
    ]

    outcomes = actions.apply_reports("a1", batch)

    assert [(o.status, o.state) for o in outcomes] == [
        ("applied", "running"),
        ("applied", "running"),
        ("applied", "succeeded"),
        ("stale", "succeeded"),
    ]
    task = Task.objects.get(pk=single_task.pk)
    assert (task.state, task.result, task.error) == (TaskState.SUCCEEDED, {"done": 1}, None)
    assert list(
        TaskEvent.objects.filter(task_id=task.pk, message_id__startswith="b-")
        .order_by("id")
        .values_list("kind", flat=True)
    ) == ["accepted", "progress", "succeeded", "stale"]
    assert job_counters(task.job_id) == (JobState.SUCCEEDED, 1, 0, 0)


def test_batch_with_not_found_report_still_applies_the_others(single_task):
    outcomes = actions.apply_reports(
        "a1",
        [Report("succeeded", 999_999, 1, message_id="x-1"), Report("succeeded", single_task.pk, 1, message_id="x-2")],
    )

    assert [o.status for o in outcomes] == ["not_found", "applied"]
    assert Task.objects.get(pk=single_task.pk).state == TaskState.SUCCEEDED
