"""What submit and preview catch before a job goes out (issue 15 items 1, 2, 5), over the API.

Fleet-wide only when explicit, a target that matches no agent, the kind against the
agents' capabilities, idempotency keys that mean the same request, and retries that
say which attempts they allow.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.test import APIClient

from aegis_site.core.models import AuditEvent
from tasks import actions
from tasks.admin import job_form
from tasks.engine.reports import Report
from tasks.models import Job, JobState, Task, TaskEvent, TaskEventKind, TaskState
from tests import support
from tests.support import client_for

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs/"
DEMO = ("echo", "noop", "sleep")  # what the demo's simulated agents offer


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()


@pytest.fixture
def alice() -> User:
    return support.staff_user("alice", ("tasks.view_job", "tasks.add_job", "tasks.change_job", "tasks.change_task"))


@pytest.fixture
def api(alice: User) -> APIClient:
    return client_for(alice)


@pytest.fixture
def demo(make_agent: Any) -> list[str]:
    """Three agents like the demo's: they run echo, noop and sleep."""
    ids = ["sim-1", "sim-2", "sim-3"]
    for agent_id in ids:
        make_agent(agent_id, labels={"simulated": "true"}, capabilities=list(DEMO))
    return ids


def nothing_written() -> bool:
    return not (Job.objects.exists() or Task.objects.exists() or AuditEvent.objects.exists())


# --- fleet-wide only when explicit ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["each", "any"])
def test_an_empty_target_is_refused_unless_target_all_says_every_agent(api, demo, mode):
    refused = api.post(JOBS, {"kind": "echo", "mode": mode}, format="json")

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "target_required"
    assert error["message"].startswith("The job has no target (no agent ids, labels or capabilities)")
    assert 'send "target_all": true' in error["message"]
    assert list(error["fields"]) == ["target_all"]
    assert nothing_written()

    launched = api.post(JOBS, {"kind": "echo", "mode": mode, "target_all": True}, format="json")

    assert launched.status_code == 201, launched.json()
    assert launched.json()["target_all"] is True
    assert Job.objects.get().target_all is True
    assert launched.json()["tasks_total"] == (3 if mode == "each" else 1)


def test_a_misspelt_target_is_refused_instead_of_widening_the_job_to_the_fleet(api, demo):
    answer = api.post(JOBS, {"kind": "echo", "target": {"agent_ids": ["sim-1"]}}, format="json")

    assert answer.status_code == 400
    assert answer.json()["error"]["fields"]["target"] == ["Unknown field."]
    assert nothing_written()


def test_target_all_with_a_target_is_refused(api, demo):
    answer = api.post(JOBS, {"kind": "echo", "target_all": True, "target_agent_ids": ["sim-1"]}, format="json")

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "target_all_with_target"
    assert "cannot be combined with a target" in answer.json()["error"]["fields"]["target_all"][0]
    assert nothing_written()


def test_target_all_is_kept_by_a_clone(api, demo):
    job_id = api.post(JOBS, {"kind": "echo", "target_all": True}, format="json").json()["id"]

    assert api.get(f"{JOBS}{job_id}/").json()["target_all"] is True
    assert job_form.initial_from_job(Job.objects.get(pk=job_id))["target_all"] is True


def test_the_preview_of_an_untargeted_job_is_refused_and_of_target_all_says_the_fleet(api, demo):
    refused = api.post(f"{JOBS}preview/", {"kind": "echo"}, format="json")
    fleet = api.post(f"{JOBS}preview/", {"kind": "echo", "target_all": True}, format="json")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "target_required"
    assert fleet.status_code == 200
    assert fleet.json()["target_all"] is True
    assert fleet.json()["warnings"] == [
        {"code": "fleet_wide", "message": "The job targets every agent of the fleet (3 now).", "agents": []}
    ]


# --- a target that matches no agent ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["each", "any"])
def test_a_target_matching_no_agent_is_refused_unless_allowed(api, demo, mode):
    body = {"kind": "echo", "mode": mode, "target_labels": {"role": "nowhere"}}

    refused = api.post(JOBS, body, format="json")

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "no_matching_agent"
    assert error["message"].startswith('The target matches no agent: labels {"role": "nowhere"}.')
    assert 'Send "allow_no_agents": true to launch it anyway.' in error["message"]
    assert list(error["fields"]) == ["allow_no_agents"]
    assert nothing_written()

    allowed = api.post(JOBS, {**body, "allow_no_agents": True}, format="json")

    assert allowed.status_code == 201, allowed.json()
    job = Job.objects.get()
    if mode == "each":
        assert (job.state, job.tasks_total) == (JobState.EMPTY, 0)  # never "succeeded, 0 of 0"
        assert allowed.json()["state"] == "empty"
        assert job.get_state_display() == "no tasks"
    else:
        assert (job.state, job.tasks_total) == (JobState.SCHEDULED, 1)  # its task waits for an agent


def test_a_continuous_job_may_match_no_agent_yet(api, demo):
    answer = api.post(JOBS, {"kind": "echo", "continuous": True, "target_labels": {"role": "later"}}, format="json")

    assert answer.status_code == 201, answer.json()
    assert (answer.json()["state"], answer.json()["tasks_total"]) == ("scheduled", 0)


def test_disabled_agents_do_not_count_as_matching(api, make_agent):
    make_agent("off-1", admin_state="disabled")

    answer = api.post(JOBS, {"kind": "echo", "target_agent_ids": ["off-1"]}, format="json")

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "no_matching_agent"


def test_the_preview_warns_of_a_target_matching_no_agent(api, demo):
    answer = api.post(f"{JOBS}preview/", {"kind": "echo", "target_labels": {"role": "nowhere"}}, format="json")

    assert answer.status_code == 200
    (warning,) = answer.json()["warnings"]
    assert warning["code"] == "no_matching_agent"
    assert warning["message"] == 'The target matches no agent: labels {"role": "nowhere"}. The job would have no tasks.'


# --- the kind against the agents' capabilities ----------------------------------------------


def test_a_kind_no_demo_agent_offers_is_refused_naming_the_agents(api, demo):
    body = {"kind": "reboot", "target_labels": {"simulated": "true"}}

    refused = api.post(JOBS, body, format="json")

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "kind_not_offered"
    assert error["agents"] == demo
    assert error["message"].startswith(
        "3 of the 3 matching agents do not offer the kind 'reboot' (it is not among their capabilities): "
        "their tasks will fail: sim-1, sim-2, sim-3."
    )
    assert list(error["fields"]) == ["allow_unsupported_kind"]
    assert nothing_written()

    allowed = api.post(JOBS, {**body, "allow_unsupported_kind": True}, format="json")

    assert allowed.status_code == 201
    assert allowed.json()["tasks_total"] == 3


def test_the_preview_warns_that_the_kind_is_not_offered(api, demo):
    answer = api.post(f"{JOBS}preview/", {"kind": "reboot", "target_labels": {"simulated": "true"}}, format="json")

    assert answer.status_code == 200
    assert (answer.json()["agent_count"], answer.json()["task_count"]) == (3, 3)
    (warning,) = answer.json()["warnings"]
    assert (warning["code"], warning["agents"]) == ("kind_not_offered", demo)
    assert "their tasks will fail" in warning["message"]
    assert nothing_written()


def test_mode_each_refuses_when_some_matched_agents_lack_the_kind(api, demo, make_agent):
    make_agent("gpu-1", labels={"simulated": "true"}, capabilities=["train"])

    answer = api.post(JOBS, {"kind": "train", "target_labels": {"simulated": "true"}}, format="json")

    assert answer.status_code == 400
    assert answer.json()["error"]["agents"] == demo


def test_mode_any_refuses_only_when_no_matched_agent_offers_the_kind(api, demo, make_agent):
    make_agent("gpu-1", labels={"simulated": "true"}, capabilities=["train"])
    body = {"kind": "train", "mode": "any", "task_count": 2, "target_labels": {"simulated": "true"}}

    offered = api.post(JOBS, body, format="json")
    nowhere = api.post(JOBS, {**body, "kind": "reboot"}, format="json")

    assert offered.status_code == 201  # gpu-1 takes them
    assert nowhere.status_code == 400
    assert nowhere.json()["error"]["code"] == "kind_not_offered"
    assert "No matching agent offers it: every task will fail." in nowhere.json()["error"]["message"]


def test_agents_that_declare_no_capabilities_are_unknown_not_failures(api, make_agent):
    make_agent("plain-1", labels={"site": "lab"})
    make_agent("plain-2", labels={"site": "lab"})
    body = {"kind": "reboot", "target_labels": {"site": "lab"}}

    preview = api.post(f"{JOBS}preview/", body, format="json").json()
    launched = api.post(JOBS, body, format="json")

    (warning,) = preview["warnings"]
    assert warning["code"] == "kind_unknown"
    assert warning["message"] == (
        "2 of the matching agents declare no capabilities, so whether they run 'reboot' is unknown "
        "(not counted as failures): plain-1, plain-2."
    )
    assert launched.status_code == 201


def test_the_allow_flags_are_not_stored_and_not_part_of_the_fingerprint(api, demo):
    body = {"kind": "reboot", "target_agent_ids": ["sim-1"], "idempotency_key": "k", "allow_unsupported_kind": True}
    first = api.post(JOBS, body, format="json")
    again = api.post(JOBS, {**body, "allow_unsupported_kind": False}, format="json")

    assert (first.status_code, again.status_code) == (201, 200)
    assert "allow_unsupported_kind" not in first.json()


# --- idempotency keys mean the same request -------------------------------------------------


def test_the_same_key_with_the_same_body_returns_the_job_and_with_another_is_409_naming_it(api, demo):
    body = {"kind": "echo", "target_agent_ids": ["sim-1"], "idempotency_key": "deploy-42"}
    first = api.post(JOBS, body, format="json")
    same = api.post(JOBS, body, format="json")
    other = api.post(JOBS, {**body, "payload": {"version": 2}}, format="json")

    assert (first.status_code, same.status_code) == (201, 200)
    assert same.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert other.json() == {
        "error": {
            "code": "idempotency_conflict",
            "message": f"The idempotency key 'deploy-42' was used by job {first.json()['id']} with a different "
            "specification; nothing was launched. Send the same body to get that job, or use a new key.",
            "existing_job": first.json()["id"],
            "idempotency_key": "deploy-42",
        }
    }
    assert Job.objects.count() == 1
    assert Job.objects.get().spec_fingerprint == Job.objects.get().spec_fingerprint.lower()
    assert len(Job.objects.get().spec_fingerprint) == 64


def test_a_field_left_out_and_the_same_field_sent_with_its_default_are_the_same_request(api, demo, settings):
    settings.TASK_DEFAULT_MAX_ATTEMPTS = 3
    short = {"kind": "echo", "target_agent_ids": ["sim-1"], "idempotency_key": "k"}
    spelled_out = {
        **short,
        "max_attempts": 3,
        "priority": 0,
        "mode": "each",
        "payload": {},
        "target_labels": {},
        "backoff_base_s": settings.TASK_DEFAULT_BACKOFF_BASE,
    }

    first = api.post(JOBS, short, format="json")
    again = api.post(JOBS, spelled_out, format="json")
    other = api.post(JOBS, {**short, "max_attempts": 4}, format="json")

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)


def test_the_order_of_a_targets_ids_and_label_choices_does_not_make_another_request(api, demo):
    body: dict[str, Any] = {"kind": "echo", "target_agent_ids": ["sim-1", "sim-2"], "idempotency_key": "k"}
    body["target_labels"] = {"simulated": ["true", "yes"]}
    first = api.post(JOBS, body, format="json")
    reordered = {**body, "target_agent_ids": ["sim-2", "sim-1"], "target_labels": {"simulated": ["yes", "true"]}}
    again = api.post(JOBS, reordered, format="json")

    assert (first.status_code, again.status_code) == (201, 200)


def test_a_job_from_before_fingerprints_is_returned_for_any_body_with_its_key(api, demo):
    first = api.post(JOBS, {"kind": "echo", "target_agent_ids": ["sim-1"], "idempotency_key": "old"}, format="json")
    Job.objects.update(spec_fingerprint="")

    again = api.post(JOBS, {"kind": "noop", "target_agent_ids": ["sim-2"], "idempotency_key": "old"}, format="json")

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


# --- retry is explicit about attempts -------------------------------------------------------


def fail_all(agent_id: str, job: Job, clock: Any) -> None:
    """Let every attempt of the job's tasks on the agent fail until none is left (waiting out each backoff)."""
    while True:
        assignments = [a for a in actions.claim_tasks(agent_id, 10) if a.job_id == job.pk]
        if not assignments:
            return
        for assignment in assignments:
            error = {"code": "E", "message": "boom"}
            report = Report("failed", assignment.task_id, assignment.attempt, message_id=uuid.uuid4().hex, error=error)
            actions.report(agent_id, report)
        clock.advance(3600)


@pytest.fixture
def exhausted(api, demo, frozen_clock) -> Job:
    """A job on sim-1 whose task used all 3 of its attempts."""
    body = {
        "kind": "echo",
        "target_agent_ids": ["sim-1"],
        "max_attempts": 3,
        "backoff_base_s": 10,
        "backoff_cap_s": 600,
    }
    job = Job.objects.get(pk=api.post(JOBS, body, format="json").json()["id"])
    fail_all("sim-1", job, frozen_clock)
    task = Task.objects.get(job=job)
    assert (task.state, task.attempt, task.max_attempts) == (TaskState.FAILED, 3, 3)
    return job


def test_retry_failed_says_the_new_allowance_and_why(api, exhausted):
    answer = api.post(f"{JOBS}{exhausted.pk}/retry-failed/", {}, format="json")

    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert (body["retried"], body["more_attempts"], body["attempts_allowed"]) == (1, 3, "4-6")
    assert (body["next_attempt"], body["max_attempts"]) == (4, 6)
    assert body["reason"] == "3 more attempts: the job's max_attempts"
    assert body["reset_backoff"] is False
    assert body["next_backoff"] == {"min_s": 40.0, "max_s": 80.0}  # attempt 4: base * 2^3, as before
    assert body["job"]["state"] == "running"
    event = TaskEvent.objects.filter(kind=TaskEventKind.RETRIED).get()
    assert event.data == {"by": "alice", "max_attempts": 6, "more_attempts": 3, "reset_backoff": False}


def test_retry_failed_with_reset_backoff_starts_the_delays_again_from_the_base(api, exhausted, frozen_clock):
    answer = api.post(f"{JOBS}{exhausted.pk}/retry-failed/", {"reset_backoff": True}, format="json")

    assert answer.json()["next_backoff"] == {"min_s": 5.0, "max_s": 10.0}
    task = Task.objects.get(job=exhausted)
    assert task.backoff_from_attempt == 3
    assert TaskEvent.objects.get(kind=TaskEventKind.RETRIED).data["reset_backoff"] is True
    audit = AuditEvent.objects.filter(action="job.retry_failed").get()
    assert (audit.data["reset_backoff"], audit.data["attempts"]) == (True, "4-6")
    (assignment,) = actions.claim_tasks("sim-1", 1)
    assert assignment.attempt == 4
    error = {"code": "E", "message": "again"}
    actions.report("sim-1", Report("failed", task.pk, 4, message_id=uuid.uuid4().hex, error=error))
    task.refresh_from_db()
    wait = task.not_before - frozen_clock()
    assert task.state == TaskState.QUEUED
    assert timedelta(seconds=5) <= wait <= timedelta(seconds=10)  # not 40-80 s as attempt 4 would wait


def test_task_retry_takes_reset_backoff_and_says_the_allowance(api, exhausted):
    task = Task.objects.get(job=exhausted)

    answer = api.post(f"/api/v1/tasks/{task.pk}/retry/", {"reset_backoff": True}, format="json")

    assert answer.status_code == 200, answer.json()
    assert (answer.json()["id"], answer.json()["state"], answer.json()["max_attempts"]) == (task.pk, "queued", 6)
    retry = answer.json()["retry"]
    assert (retry["attempts_allowed"], retry["reason"], retry["reset_backoff"]) == (
        "4-6",
        "3 more attempts: the job's max_attempts",
        True,
    )


def test_retry_without_a_body_still_works(api, exhausted):
    answer = api.post(f"{JOBS}{exhausted.pk}/retry-failed/")

    assert answer.status_code == 200
    assert answer.json()["attempts_allowed"] == "4-6"
