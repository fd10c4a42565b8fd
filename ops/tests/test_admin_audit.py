"""The audit log in the admin: read-only for everyone, newest first, filters, object links, cheap pages."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core.audit import Actor, record
from aegis_site.core.models import AuditEvent
from tests.support import staff_user

pytestmark = pytest.mark.django_db

ALICE = Actor("alice")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def changelist(query: str = "") -> str:
    return reverse("admin:core_auditevent_changelist") + query


def detail(event: AuditEvent) -> str:
    return reverse("admin:core_auditevent_change", args=[event.pk])


def listed(client: Client, query: str = "") -> list[int]:
    response = client.get(changelist(query))
    assert response.status_code == 200
    return [event.pk for event in response.context["cl"].result_list]


@pytest.fixture
def log() -> dict[str, AuditEvent]:
    return {
        "agent": record(ALICE, "agent.drain", "agent", "node-1"),
        "job": record(ALICE, "job.submit", "job", 7, kind="echo", tasks=3),
        "task": record(Actor("bob"), "task.cancel", "task", 42, force=True),
        "token": record(Actor.system("prune"), "api_token.revoke", "api_token", 5),
    }


def test_list_is_newest_first_with_links_to_agents_jobs_and_tasks(admin_client, log):
    response = admin_client.get(changelist())
    page = response.content.decode()

    assert [event.pk for event in response.context["cl"].result_list] == [
        log[name].pk for name in ("token", "task", "job", "agent")
    ]
    assert f'<a href="{reverse("admin:registry_agent_change", args=["node-1"])}">agent node-1</a>' in page
    assert f'<a href="{reverse("admin:tasks_job_change", args=[7])}">job 7</a>' in page
    assert f'<a href="{reverse("admin:tasks_task_change", args=[42])}">task 42</a>' in page
    assert "api_token 5" in page
    assert html.escape('{"kind": "echo", "tasks": 3}') in page
    assert 'data-live="audit"' in page


def test_long_data_is_shortened_in_the_list(admin_client):
    record(ALICE, "job.submit", "job", 1, note="x" * 500)

    page = admin_client.get(changelist()).content.decode()

    assert "x" * 500 not in page
    assert "…" in page


def test_filters_by_action_object_type_and_actor(admin_client, log):
    assert listed(admin_client, "?action=task.cancel") == [log["task"].pk]
    assert listed(admin_client, "?object_type=job") == [log["job"].pk]
    assert listed(admin_client, "?actor=alice") == [log["job"].pk, log["agent"].pk]
    assert listed(admin_client, "?actor=system:prune") == [log["token"].pk]
    assert listed(admin_client, "?actor=alice&object_type=agent") == [log["agent"].pk]


def test_search_finds_an_object_by_id(admin_client, log):
    assert listed(admin_client, "?q=node-1") == [log["agent"].pk]
    assert listed(admin_client, "?q=42") == [log["task"].pk]


def test_detail_shows_the_data_as_indented_json(admin_client, log):
    page = admin_client.get(detail(log["job"])).content.decode()

    assert html.escape(json.dumps({"kind": "echo", "tasks": 3}, indent=2)) in page
    assert f'href="{reverse("admin:tasks_job_change", args=[7])}"' in page


def test_nobody_adds_changes_or_deletes_audit_rows_not_even_a_superuser(admin_client, log):
    event = log["task"]
    before = AuditEvent.objects.filter(pk=event.pk).values().get()

    listing = admin_client.get(changelist())
    assert listing.context["has_add_permission"] is False
    assert listing.context["cl"].model_admin.get_actions(listing.wsgi_request) == {}
    page = admin_client.get(detail(event))
    assert (page.context["has_change_permission"], page.context["has_delete_permission"]) == (False, False)
    assert admin_client.get(reverse("admin:core_auditevent_add")).status_code == 403
    assert admin_client.post(reverse("admin:core_auditevent_add"), {"action": "forged"}).status_code == 403
    assert admin_client.post(detail(event), {"action": "forged"}).status_code == 403
    delete = reverse("admin:core_auditevent_delete", args=[event.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    admin_client.post(changelist(), {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})

    assert AuditEvent.objects.filter(pk=event.pk).values().get() == before
    assert AuditEvent.objects.count() == len(log)


def queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_list_costs_the_same_queries_for_3_or_30_rows(admin_client):
    for number in range(3):
        record(ALICE, "task.cancel", "task", number)
    few = queries(admin_client, changelist())

    for number in range(27):
        record(ALICE, "task.retry", "task", number)
    many = queries(admin_client, changelist())

    assert AuditEvent.objects.count() == 30
    assert many == few


def test_user_who_is_not_staff_is_sent_to_the_login_page(client, log):
    client.force_login(staff_user("visitor", is_staff=False))

    for url in (changelist(), detail(log["job"])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_staff_need_the_view_permission(client, log):
    client.force_login(staff_user("helper"))
    assert client.get(changelist()).status_code == 403

    client.force_login(staff_user("auditor", perms=("core.view_auditevent",)))
    assert client.get(changelist()).status_code == 200
    assert client.get(detail(log["job"])).status_code == 200
