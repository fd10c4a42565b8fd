"""The admin's Launch follows the API's submit checks, and "Retry failed" confirms what it gives first."""

from __future__ import annotations

import re
import uuid
from html import unescape
from typing import Any

import pytest
from django.urls import reverse

from tasks import actions
from tasks.engine.reports import Report
from tasks.models import Job, Task, TaskEvent, TaskEventKind, TaskState
from tasks.tests.test_admin_jobs import ADD, detail_url, form_data

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def demo(make_agent: Any) -> None:
    for n in (1, 2, 3):
        make_agent(f"sim-{n}", labels={"simulated": "true"}, capabilities=["echo", "noop", "sleep"])


def text(response: Any) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, white space collapsed."""
    words = " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())
    return re.sub(r" ([:;,.)])", r"\1", words)


def field_errors(response: Any, name: str) -> list[str]:
    return list(response.context["form"].errors.get(name, []))


def test_an_untargeted_launch_needs_the_fleet_checkbox(admin_client, demo):
    refused = admin_client.post(ADD, form_data(_launch="Launch"))

    assert refused.status_code == 200
    assert field_errors(refused, "target_all")[0].startswith("The job has no target")
    assert "Nothing was launched" in text(refused)
    assert "Target every agent of the fleet" in text(refused)
    assert not Job.objects.exists()

    preview = admin_client.post(ADD, form_data(target_all="on", _preview="Preview"))
    assert "Target: every agent of the fleet (3)." in text(preview)

    launched = admin_client.post(ADD, form_data(target_all="on", _launch="Launch"))
    job = Job.objects.get()
    assert launched["Location"] == detail_url(job)
    assert (job.target_all, job.tasks_total) == (True, 3)


def test_a_kind_the_agents_do_not_offer_is_warned_in_the_preview_and_refused_on_launch(admin_client, demo):
    preview = admin_client.post(ADD, form_data(kind="reboot", target_all="on", _preview="Preview"))

    page = text(preview)
    assert "3 of the 3 matching agents do not offer the kind 'reboot'" in page
    assert "Launch although agents do not offer the kind" in page  # the checkbox, shown with the warning

    refused = admin_client.post(ADD, form_data(kind="reboot", target_all="on", _launch="Launch"))
    (error,) = field_errors(refused, "allow_unsupported_kind")
    assert error.startswith("3 of the 3 matching agents")
    assert error.endswith('Tick "Launch although agents do not offer the kind" to launch it anyway.')  # not the API's
    assert not Job.objects.exists()

    allowed = admin_client.post(
        ADD, form_data(kind="reboot", target_all="on", allow_unsupported_kind="on", _launch="Launch")
    )
    assert allowed.status_code == 302
    assert Job.objects.get().kind == "reboot"


def test_a_target_matching_no_agent_is_warned_and_refused_unless_allowed(admin_client, demo):
    labels = [("role", "=", "nowhere")]
    preview = admin_client.post(ADD, form_data(labels=labels, _preview="Preview"))

    assert 'The target matches no agent: labels {"role": "nowhere"}. The job would have no tasks.' in text(preview)
    assert "Launch although no agent matches" in text(preview)

    refused = admin_client.post(ADD, form_data(labels=labels, _launch="Launch"))
    assert field_errors(refused, "allow_no_agents")[0].startswith("The target matches no agent")
    assert not Job.objects.exists()

    allowed = admin_client.post(ADD, form_data(labels=labels, allow_no_agents="on", _launch="Launch"))
    assert allowed.status_code == 302
    assert Job.objects.get().state == "empty"


# --- retry with a confirmation -------------------------------------------------------------


@pytest.fixture
def exhausted(make_agent: Any, spec: Any, operator: Any, frozen_clock: Any) -> Job:
    """A job whose one task used its 3 attempts on a-1 (backoff base 10 s)."""
    make_agent("a-1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a-1"], max_attempts=3, backoff_base_s=10.0), operator)
    for attempt in (1, 2, 3):
        (assignment,) = actions.claim_tasks("a-1", 1)
        error = {"code": "E", "message": "boom"}
        actions.report("a-1", Report("failed", assignment.task_id, attempt, message_id=uuid.uuid4().hex, error=error))
        frozen_clock.advance(3600)
    assert Task.objects.get(job=job).state == TaskState.FAILED
    return job


def test_retry_failed_shows_what_it_gives_before_it_runs(admin_client, exhausted):
    url = reverse("admin:tasks_job_retry_failed", args=[exhausted.pk])

    page = text(admin_client.get(url))

    assert "1 failed or timed-out task will be queued again." in page
    assert "Attempt 4 of 6 next: 3 more attempts: the job's max_attempts (3)" in page
    assert "the task waits 40-80 s (the backoff goes on growing from the attempt number)" in page
    assert "with the backoff reset, 5-10 s (from backoff base 10 s again)" in page
    assert "Reset the backoff" in page
    assert Task.objects.get(job=exhausted).state == TaskState.FAILED  # a GET changes nothing


def test_the_job_page_leads_to_the_confirmation(admin_client, exhausted):
    page = admin_client.get(detail_url(exhausted)).content.decode()

    button = re.search(r'<form class="job-controls" method="get" action="([^"]+)"><button[^>]*>Retry failed', page)
    assert button is not None
    assert button.group(1) == reverse("admin:tasks_job_retry_failed", args=[exhausted.pk])


def test_retry_failed_confirmed_with_reset_backoff(admin_client, exhausted):
    url = reverse("admin:tasks_job_retry_failed", args=[exhausted.pk])

    response = admin_client.post(url, {"reset_backoff": "on"}, follow=True)

    assert (
        "Queued 1 failed task again: attempt 4 of 6 next (3 more attempts: the job's max_attempts); "
        "the backoff starts again from the base."
    ) in text(response)
    task = Task.objects.get(job=exhausted)
    assert (task.state, task.max_attempts, task.backoff_from_attempt) == (TaskState.QUEUED, 6, 3)
    assert TaskEvent.objects.get(task=task, kind=TaskEventKind.RETRIED).data["reset_backoff"] is True


def test_the_task_page_retry_can_reset_the_backoff(admin_client, exhausted):
    task = Task.objects.get(job=exhausted)
    page = admin_client.get(reverse("admin:tasks_task_change", args=[task.pk])).content.decode()
    assert 'name="reset_backoff" id="task-reset-backoff"' in page

    admin_client.post(reverse("admin:tasks_task_operate", args=[task.pk]), {"_retry": "1", "reset_backoff": "on"})

    task.refresh_from_db()
    assert (task.state, task.max_attempts, task.backoff_from_attempt) == (TaskState.QUEUED, 6, 3)
