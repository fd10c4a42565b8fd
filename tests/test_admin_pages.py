"""The admin: pages render for a superuser and nobody else; history stays read-only; deletes go through actions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import Agent, AgentCredential
from tasks import actions as task_actions
from tasks.models import Job, Task, TaskEvent, TaskEventKind, TaskState

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Creating the test users must not spend most of the run stretching passwords."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Fleet:
    """One row of every model the admin shows, made through the actions."""

    agent: Agent
    credential: AgentCredential
    job: Job
    task: Task
    event: TaskEvent
    audit: AuditEvent
    message: OutboxMessage

    def of(self, model: type[Model]) -> Model:
        return next(obj for obj in vars(self).values() if isinstance(obj, model))


@pytest.fixture
def fleet(spec, frozen_clock) -> Fleet:
    operator = Actor("operator")
    agent, _ = registry_actions.register_agent("node-1", operator, labels={"role": "web"}, max_concurrency=2)
    registry_actions.mark_online("node-1")
    credential, _ = registry_actions.issue_token("node-1", operator)
    job, _ = task_actions.submit_job(spec(target_agent_ids=["node-1"]), operator)
    (assignment,) = task_actions.claim_tasks("node-1", 5, push=True)
    task = Task.objects.get(pk=assignment.task_id)
    return Fleet(
        agent=agent,
        credential=credential,
        job=job,
        task=task,
        event=TaskEvent.objects.filter(task=task, kind=TaskEventKind.ASSIGNED).get(),
        audit=AuditEvent.objects.filter(action="job.submit").get(),
        message=OutboxMessage.objects.filter(message_type="task.assign").get(),
    )


MODELS = [Agent, AgentCredential, Job, Task, TaskEvent, AuditEvent, OutboxMessage]
READ_ONLY = [Job, Task, TaskEvent, AuditEvent]


def admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def pages(fleet: Fleet) -> list[str]:
    urls = [reverse("admin:index")]
    for model in MODELS:
        urls += [admin_url(model, "changelist"), admin_url(model, "change", fleet.of(model).pk)]
    return urls


def is_login_redirect(response: Any) -> bool:
    return response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


# --- who gets in ------------------------------------------------------------------------


def test_superuser_sees_every_page(admin_client, fleet):
    for url in pages(fleet):
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_change_pages_show_the_object(admin_client, fleet):
    response = admin_client.get(admin_url(Agent, "change", "node-1"))
    assert fleet.credential.token_prefix in response.content.decode()

    response = admin_client.get(admin_url(Task, "change", fleet.task.pk))
    assert response.context["original"] == fleet.task


def test_anonymous_user_is_sent_to_the_login_page(client, fleet):
    for url in pages(fleet):
        assert is_login_redirect(client.get(url)), url


def test_user_who_is_not_staff_is_sent_to_the_login_page(client, django_user_model, fleet):
    user = django_user_model.objects.create_user("visitor", password="pw-visitor-1")
    client.force_login(user)

    for url in pages(fleet):
        assert is_login_redirect(client.get(url)), url


def test_staff_without_permissions_cannot_open_model_pages(client, django_user_model, fleet):
    user = django_user_model.objects.create_user("helper", password="pw-helper-1", is_staff=True)
    client.force_login(user)

    for url in pages(fleet)[1:]:
        assert client.get(url).status_code == 403, url


# --- history and audit are read-only ----------------------------------------------------


@pytest.mark.parametrize("model", READ_ONLY, ids=lambda m: m.__name__)
def test_read_only_admin_offers_no_add_change_or_delete(admin_client, fleet, model):
    obj = fleet.of(model)

    creatable = model is Job  # jobs are created in the admin through submit_job (tasks/tests/test_admin_jobs.py)
    changelist = admin_client.get(admin_url(model, "changelist"))
    assert changelist.context["has_add_permission"] is creatable
    assert "delete_selected" not in changelist.context["cl"].model_admin.get_actions(changelist.wsgi_request)
    change = admin_client.get(admin_url(model, "change", obj.pk))
    assert change.context["has_change_permission"] is False
    assert change.context["has_delete_permission"] is False
    assert admin_client.get(admin_url(model, "add")).status_code == (200 if creatable else 403)


@pytest.mark.parametrize("model", READ_ONLY, ids=lambda m: m.__name__)
def test_read_only_admin_refuses_a_delete_post(admin_client, fleet, model):
    obj = fleet.of(model)

    assert admin_client.post(admin_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    admin_client.post(
        admin_url(model, "changelist"), {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"}
    )

    assert model._default_manager.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", READ_ONLY, ids=lambda m: m.__name__)
def test_read_only_admin_refuses_a_change_post(admin_client, fleet, model):
    obj = fleet.of(model)
    before = model._default_manager.filter(pk=obj.pk).values().get()

    response = admin_client.post(admin_url(model, "change", obj.pk), {"kind": "changed", "action": "changed"})

    assert response.status_code == 403
    assert model._default_manager.filter(pk=obj.pk).values().get() == before


# --- deleting an agent ------------------------------------------------------------------


def test_deleting_an_agent_in_the_admin_removes_it_through_the_action(admin_client, admin_user, fleet, spec):
    queued_job, _ = task_actions.submit_job(spec(target_agent_ids=["node-1"]), Actor("operator"))
    (queued,) = Task.objects.filter(job=queued_job)

    response = admin_client.post(admin_url(Agent, "delete", "node-1"), {"post": "yes"})

    assert response.status_code == 302
    assert not Agent.objects.filter(pk="node-1").exists()
    for task_id in (fleet.task.pk, queued.pk):
        task = Task.objects.get(pk=task_id)
        assert task.state == TaskState.CANCELED
        assert TaskEvent.objects.filter(task_id=task_id, kind=TaskEventKind.CANCELED).exists()
    audit = AuditEvent.objects.get(action="agent.remove", object_id="node-1")
    assert (audit.actor_label, audit.actor_id) == (admin_user.get_username(), admin_user.pk)


def test_bulk_deleting_agents_in_the_admin_removes_them_through_the_action(admin_client, fleet, make_agent):
    make_agent("node-2")

    admin_client.post(
        admin_url(Agent, "changelist"),
        {"action": "delete_selected", "_selected_action": ["node-1", "node-2"], "post": "yes"},
    )

    assert not Agent.objects.exists()
    assert Task.objects.get(pk=fleet.task.pk).state == TaskState.CANCELED
    assert sorted(AuditEvent.objects.filter(action="agent.remove").values_list("object_id", flat=True)) == [
        "node-1",
        "node-2",
    ]


# --- the task list stays cheap ----------------------------------------------------------


def task_list_queries(admin_client: Any, query: str = "") -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(admin_url(Task, "changelist") + query)
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries]


def counts_over_tasks(queries: list[str]) -> list[str]:
    table = connection.ops.quote_name("tasks")
    return [sql for sql in queries if "COUNT(" in sql.upper() and f"FROM {table}" in sql]


def test_task_list_costs_the_same_queries_for_5_or_50_tasks(admin_client, spec, make_agent, frozen_clock):
    operator = Actor("operator")
    make_agent("node-1")
    task_actions.submit_job(spec(mode="any", task_count=5), operator)
    task_actions.claim_tasks("node-1", 2)
    few = task_list_queries(admin_client)

    task_actions.submit_job(spec(mode="any", task_count=45), operator)
    task_actions.claim_tasks("node-1", 2)
    many = task_list_queries(admin_client)

    assert Task.objects.count() == 50
    assert len(many) == len(few)
    assert len(many) <= 10


def test_filtered_task_list_counts_no_unfiltered_total(admin_client, spec, make_agent, frozen_clock):
    make_agent("node-1")
    task_actions.submit_job(spec(mode="any", task_count=5), Actor("operator"))
    task_actions.claim_tasks("node-1", 2)

    unfiltered = counts_over_tasks(task_list_queries(admin_client))
    filtered = counts_over_tasks(task_list_queries(admin_client, "?state__exact=queued"))

    assert len(unfiltered) == 1  # the paginator's count; no second, "full" count
    assert len(filtered) == 1
    assert "WHERE" in filtered[0].upper()
