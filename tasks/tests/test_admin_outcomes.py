"""The one outcome vocabulary (issue 15 item 3): labels from the model choices, badges, the failed split."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from tasks import actions, outcomes
from tasks.models import Job, JobState, Task, TaskState

pytestmark = pytest.mark.django_db


def test_labels_come_from_the_model_choices() -> None:
    assert outcomes.label(TaskState.TIMED_OUT) == "timed out"
    assert outcomes.label("timed_out") == TaskState.TIMED_OUT.label
    for state, label in (*JobState.choices, *TaskState.choices):
        assert outcomes.label(state) == label
        assert label == label.lower(), label  # never Django's title-cased "Timed Out"


def test_a_state_this_release_does_not_know_shows_by_its_words_in_grey() -> None:
    assert outcomes.label("archived") == "archived"
    assert outcomes.label("on_hold") == "on hold"
    assert outcomes.tone("archived") == "neutral"
    assert str(outcomes.badge("archived")) == '<span class="job-badge job-badge-archived">archived</span>'


def test_the_failed_count_says_its_timed_out_part() -> None:
    assert outcomes.failed_text(3, 3) == "3 failed (3 timed out)"
    assert outcomes.failed_text(2, 0) == "2 failed"
    assert outcomes.failed_text(2, None) == "2 failed"
    summary = outcomes.JobOutcome(total=5, succeeded=1, failed=3, timed_out=2, canceled=0)
    assert summary.summary == "4 of 5 tasks finished: 1 succeeded, 3 failed (2 timed out), 0 canceled"
    assert summary.parts == "1 succeeded, 3 failed (2 timed out), 0 canceled, 1 not finished of 5"


def test_the_api_docs_describe_states_with_the_same_labels() -> None:
    assert "timed_out (timed out)" in str(Task._meta.get_field("state").help_text)
    assert "failed or timed out" in str(Job._meta.get_field("tasks_failed").help_text)


def test_a_job_in_a_state_the_pages_do_not_know_renders_grey_by_its_label(
    admin_client: Any, spec: Any, operator: Any, make_agent: Any
) -> None:
    """e.g. a newer release's terminal state: the list, the page and the dashboard show its label, no error."""
    make_agent("a-1")
    job, _ = actions.submit_job(spec(target_agent_ids=["a-1"]), operator)
    Job.objects.filter(pk=job.pk).update(state="archived")

    listing = admin_client.get(reverse("admin:tasks_job_changelist")).content.decode()
    page = admin_client.get(reverse("admin:tasks_job_change", args=[job.pk])).content.decode()

    assert '<span class="job-badge job-badge-archived">archived</span>' in listing
    assert '<span class="job-badge job-badge-archived" id="job-state">archived</span>' in page
    assert ".job-badge { display: inline-block;" in page  # the grey default every unknown state gets


def test_the_task_event_list_shows_transitions_by_label(
    admin_client: Any, spec: Any, operator: Any, make_agent: Any, frozen_clock: Any
) -> None:
    make_agent("a-1")
    actions.submit_job(spec(target_agent_ids=["a-1"], max_attempts=1, delivery_timeout_s=5), operator)
    actions.claim_tasks("a-1", 1)
    frozen_clock.advance(10)
    actions.expire_leases()

    page = admin_client.get(reverse("admin:tasks_taskevent_changelist")).content.decode()

    assert '<td class="field-transition">assigned → timed out</td>' in page
    assert "timed_out" not in page.split('id="result_list"')[1].split("</table>")[0]
