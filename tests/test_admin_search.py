"""Admin searches are exact and index-backed; acting on "every row of the list" is refused."""

from __future__ import annotations

import pytest
from django.urls import reverse

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from registry import actions as registry_actions
from registry.models import AdminState, Agent
from tasks import actions as task_actions
from tasks.models import Task, TaskEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def two_jobs(make_agent, spec, frozen_clock):
    make_agent("node-1")
    make_agent("node-12")
    operator = Actor("operator")
    first, _ = task_actions.submit_job(spec(target_agent_ids=["node-1"]), operator)
    second, _ = task_actions.submit_job(spec(target_agent_ids=["node-12"]), operator)
    task_actions.claim_tasks("node-1", 5, push=True)
    task_actions.claim_tasks("node-12", 5, push=True)
    return first, second


def results(response) -> list:
    return list(response.context["cl"].result_list)


def test_task_event_search_matches_a_task_id_exactly(admin_client, two_jobs):
    task = Task.objects.get(job=two_jobs[0])

    found = results(admin_client.get(reverse("admin:tasks_taskevent_changelist"), {"q": str(task.pk)}))

    assert found
    assert {event.task_id for event in found} == {task.pk}


def test_task_event_search_matches_an_agent_id_exactly_not_a_part_of_it(admin_client, two_jobs):
    found = results(admin_client.get(reverse("admin:tasks_taskevent_changelist"), {"q": "node-1"}))

    assert found
    assert {event.agent_id for event in found} == {"node-1"}
    assert results(admin_client.get(reverse("admin:tasks_taskevent_changelist"), {"q": "node"})) == []


def test_task_event_list_shows_the_newest_first(admin_client, two_jobs):
    found = results(admin_client.get(reverse("admin:tasks_taskevent_changelist")))

    assert [event.pk for event in found] == sorted(TaskEvent.objects.values_list("pk", flat=True), reverse=True)


def test_audit_search_matches_an_object_id_exactly(admin_client, two_jobs):
    first, second = two_jobs

    found = results(admin_client.get(reverse("admin:core_auditevent_changelist"), {"q": str(first.pk)}))

    assert found
    assert {(event.object_type, event.object_id) for event in found} == {("job", str(first.pk))}
    assert AuditEvent.objects.filter(object_id=str(second.pk)).exists()


def test_credential_search_matches_agent_prefix_or_fingerprint_exactly(admin_client, make_agent, operator):
    make_agent("node-7")
    make_agent("node-77")
    credential, _ = registry_actions.issue_token("node-7", operator)
    registry_actions.issue_token("node-77", operator)
    changelist = reverse("admin:registry_agentcredential_changelist")

    by_agent = results(admin_client.get(changelist, {"q": "node-7"}))
    by_prefix = results(admin_client.get(changelist, {"q": credential.token_prefix}))

    assert [c.pk for c in by_agent] == [credential.pk]
    assert [c.pk for c in by_prefix] == [credential.pk]


def test_acting_on_every_row_of_a_list_is_refused_and_changes_nothing(admin_client, make_agent):
    for n in range(3):
        make_agent(f"fleet-{n}")

    response = admin_client.post(
        reverse("admin:registry_agent_changelist"),
        {"action": "drain", "_selected_action": ["fleet-0"], "select_across": "1", "index": "0"},
        follow=True,
    )

    assert "Acting on every row of the list is not offered" in response.content.decode()
    assert set(Agent.objects.values_list("admin_state", flat=True)) == {AdminState.ACTIVE}
    assert not AuditEvent.objects.filter(action="agent.drain").exists()


def test_change_lists_offer_no_select_all_across_pages(admin_client, two_jobs, monkeypatch):
    from django.contrib import admin

    monkeypatch.setattr(admin.site._registry[Task], "list_per_page", 1)  # two tasks: two pages

    page = admin_client.get(reverse("admin:tasks_task_changelist")).content.decode()

    assert 'class="action-counter"' in page
    assert "select the objects across all pages" not in page
