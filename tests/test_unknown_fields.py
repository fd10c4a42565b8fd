"""Every write endpoint refuses a body with a field it does not take (400, naming it) and changes nothing.

A misspelt field used to be dropped without a word: ``{"target": {"agent_ids": [...]}}``
made a job with an empty target. ``aegis_site.api.strict`` refuses unknown keys in
every serializer that reads a body; these are all the endpoints with a request body
(the list is checked against the OpenAPI document, so a new one cannot be missed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from drf_spectacular.generators import SchemaGenerator
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.test import APIClient

from aegis_site.api import errors
from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from notify import actions as notify_actions
from notify.models import Delivery, Subscription
from ops.models import ApiToken
from registry import actions as registry_actions
from registry.models import Agent, AgentCredential, EnrolmentToken
from tasks import actions
from tasks.engine.reports import Report
from tasks.engine.submit import JobSpec
from tasks.models import Job, Task, TaskEvent
from tests.support import client_for

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-only"  # nosec B105


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()


def snapshot() -> tuple[Any, ...]:
    """Everything a write could change."""
    return (
        list(Job.objects.order_by("pk").values_list("pk", "state", "tasks_total")),
        list(Task.objects.order_by("pk").values_list("pk", "state", "attempt", "max_attempts")),
        TaskEvent.objects.count(),
        list(Agent.objects.order_by("pk").values_list("pk", "labels", "admin_state", "connectivity", "transport")),
        list(AgentCredential.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(EnrolmentToken.objects.order_by("pk").values_list("pk", "name", "agent_id_prefix")),
        list(ApiToken.objects.order_by("pk").values_list("pk", "revoked_at")),
        AuditEvent.objects.count(),
        list(Subscription.objects.order_by("pk").values_list("pk", "name", "url", "events", "enabled", "secret")),
        list(Delivery.objects.order_by("pk").values_list("pk", "state", "next_attempt_at", "deadline")),
    )


HOOK = {"name": "hook", "url": "https://hooks.example.org/aegis", "events": ["job.finished"]}


class World:
    """An operator, an agent holding a task, a failed task, an enrolment token: something for every endpoint."""

    def __init__(self) -> None:
        self.user = User.objects.create_superuser("root", password=PASSWORD)
        self.operator = client_for(self.user)
        Agent.objects.create(pk="edge-1", max_concurrency=4, capabilities=["echo"])
        credential, token = registry_actions.issue_token("edge-1", Actor("tester"))
        self.credential = credential.pk
        self.agent = APIClient()
        self.agent.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        self.anonymous = APIClient()
        self.subscription = notify_actions.create_subscription(Actor("t"), **HOOK).pk
        failed, _ = actions.submit_job(JobSpec(kind="echo", target_agent_ids=["edge-1"], max_attempts=1), Actor("t"))
        self.failed_job = failed.pk
        self.failed_task = failed.tasks.get().pk
        (assignment,) = actions.claim_tasks("edge-1", 1)
        error = {"code": "E", "message": "boom"}
        actions.report("edge-1", Report("failed", assignment.task_id, 1, message_id="m1", error=error))
        held, _ = actions.submit_job(JobSpec(kind="echo", target_agent_ids=["edge-1"]), Actor("t"))
        self.held_job = held.pk
        (assignment,) = actions.claim_tasks("edge-1", 1)
        self.held_task = assignment.task_id
        enrolment, self.bootstrap = registry_actions.create_enrolment_token(Actor("t"), uses=5)
        self.enrolment = enrolment.pk
        login = self.anonymous.post("/api/v1/auth/token/", {"username": "root", "password": PASSWORD}, format="json")
        self.refresh = login.json()["refresh"]
        self.api_token = self.operator.post("/api/v1/me/tokens/", {"name": "script"}, format="json").json()["id"]
        self.delivery = Delivery.objects.get().pk  # the failed job's job.finished


# (method, path, who, a valid body) for every endpoint that reads a body.
Case = tuple[str, Callable[[World], str], Callable[[World], APIClient], Callable[[World], dict[str, Any]]]
CASES: dict[str, Case] = {
    "post /api/v1/jobs/": (
        "post",
        lambda w: "/api/v1/jobs/",
        lambda w: w.operator,
        lambda w: {"kind": "echo", "target_agent_ids": ["edge-1"]},
    ),
    "post /api/v1/jobs/preview/": (
        "post",
        lambda w: "/api/v1/jobs/preview/",
        lambda w: w.operator,
        lambda w: {"kind": "echo", "target_agent_ids": ["edge-1"]},
    ),
    "post /api/v1/jobs/{id}/cancel/": (
        "post",
        lambda w: f"/api/v1/jobs/{w.held_job}/cancel/",
        lambda w: w.operator,
        lambda w: {"force": True},
    ),
    "post /api/v1/jobs/{id}/retry-failed/": (
        "post",
        lambda w: f"/api/v1/jobs/{w.failed_job}/retry-failed/",
        lambda w: w.operator,
        lambda w: {"reset_backoff": True},
    ),
    "post /api/v1/tasks/{id}/cancel/": (
        "post",
        lambda w: f"/api/v1/tasks/{w.held_task}/cancel/",
        lambda w: w.operator,
        lambda w: {"force": True},
    ),
    "post /api/v1/tasks/{id}/retry/": (
        "post",
        lambda w: f"/api/v1/tasks/{w.failed_task}/retry/",
        lambda w: w.operator,
        lambda w: {"reset_backoff": True},
    ),
    "post /api/v1/notifications/subscriptions/": (
        "post",
        lambda w: "/api/v1/notifications/subscriptions/",
        lambda w: w.operator,
        lambda w: dict(HOOK),
    ),
    "put /api/v1/notifications/subscriptions/{id}/": (
        "put",
        lambda w: f"/api/v1/notifications/subscriptions/{w.subscription}/",
        lambda w: w.operator,
        lambda w: {**HOOK, "name": "renamed"},
    ),
    "patch /api/v1/notifications/subscriptions/{id}/": (
        "patch",
        lambda w: f"/api/v1/notifications/subscriptions/{w.subscription}/",
        lambda w: w.operator,
        lambda w: {"name": "renamed"},
    ),
    "patch /api/v1/agents/{id}/": (
        "patch",
        lambda w: "/api/v1/agents/edge-1/",
        lambda w: w.operator,
        lambda w: {"labels": {"zone": "b"}},
    ),
    "post /api/v1/enrolment-tokens/": (
        "post",
        lambda w: "/api/v1/enrolment-tokens/",
        lambda w: w.operator,
        lambda w: {"name": "more"},
    ),
    "patch /api/v1/enrolment-tokens/{id}/": (
        "patch",
        lambda w: f"/api/v1/enrolment-tokens/{w.enrolment}/",
        lambda w: w.operator,
        lambda w: {"agent_id_prefix": "lab-"},
    ),
    "post /api/v1/me/tokens/": (
        "post",
        lambda w: "/api/v1/me/tokens/",
        lambda w: w.operator,
        lambda w: {"name": "deploy"},
    ),
    "post /api/v1/auth/token/": (
        "post",
        lambda w: "/api/v1/auth/token/",
        lambda w: w.anonymous,
        lambda w: {"username": "root", "password": PASSWORD},
    ),
    "post /api/v1/auth/token/refresh/": (
        "post",
        lambda w: "/api/v1/auth/token/refresh/",
        lambda w: w.anonymous,
        lambda w: {"refresh": w.refresh},
    ),
    "post /api/v1/agent/enrol/": (
        "post",
        lambda w: "/api/v1/agent/enrol/",
        lambda w: w.anonymous,
        lambda w: {"enrolment_token": w.bootstrap, "agent_id": "edge-2"},
    ),
    "post /api/v1/agent/heartbeat/": (
        "post",
        lambda w: "/api/v1/agent/heartbeat/",
        lambda w: w.agent,
        lambda w: {"running": []},
    ),
    "post /api/v1/agent/tasks/claim/": (
        "post",
        lambda w: "/api/v1/agent/tasks/claim/",
        lambda w: w.agent,
        lambda w: {"max_tasks": 1},
    ),
    "post /api/v1/agent/tasks/{task_id}/events/": (
        "post",
        lambda w: f"/api/v1/agent/tasks/{w.held_task}/events/",
        lambda w: w.agent,
        lambda w: {"type": "accepted", "attempt": 1},
    ),
    "post /api/v1/agent/token/refresh/": (
        "post",
        lambda w: "/api/v1/agent/token/refresh/",
        lambda w: w.anonymous,
        lambda w: {"refresh": w.refresh},
    ),
    "post /api/v1/agent/tasks/{task_id}/artifacts/": (
        "post",
        lambda w: f"/api/v1/agent/tasks/{w.held_task}/artifacts/",
        lambda w: w.agent,
        lambda w: {"attempt": 1, "name": "report.txt", "size": 1, "sha256": "0" * 64},
    ),
}


# Controls that take no parameters (no request body in the OpenAPI document): a body with fields is refused too.
Control = tuple[str, Callable[[World], str], Callable[[World], APIClient]]
NO_PARAMETERS: dict[str, Control] = {
    "post /api/v1/jobs/{id}/pause/": ("post", lambda w: f"/api/v1/jobs/{w.held_job}/pause/", lambda w: w.operator),
    "post /api/v1/jobs/{id}/resume/": ("post", lambda w: f"/api/v1/jobs/{w.held_job}/resume/", lambda w: w.operator),
    "post /api/v1/agent/token/": ("post", lambda w: "/api/v1/agent/token/", lambda w: w.agent),
    "post /api/v1/agent/tasks/{task_id}/artifacts/{artifact_id}/complete/": (
        "post",
        lambda w: f"/api/v1/agent/tasks/{w.held_task}/artifacts/1/complete/",  # refused before it is looked up
        lambda w: w.agent,
    ),
    "post /api/v1/agents/{id}/credentials/{credential_id}/revoke/": (
        "post",
        lambda w: f"/api/v1/agents/edge-1/credentials/{w.credential}/revoke/",
        lambda w: w.operator,
    ),
    "post /api/v1/agents/{id}/disable/": ("post", lambda w: "/api/v1/agents/edge-1/disable/", lambda w: w.operator),
    "post /api/v1/agents/{id}/drain/": ("post", lambda w: "/api/v1/agents/edge-1/drain/", lambda w: w.operator),
    "post /api/v1/agents/{id}/enable/": ("post", lambda w: "/api/v1/agents/edge-1/enable/", lambda w: w.operator),
    "post /api/v1/agents/{id}/rotate-token/": (
        "post",
        lambda w: "/api/v1/agents/edge-1/rotate-token/",
        lambda w: w.operator,
    ),
    "post /api/v1/enrolment-tokens/{id}/revoke/": (
        "post",
        lambda w: f"/api/v1/enrolment-tokens/{w.enrolment}/revoke/",
        lambda w: w.operator,
    ),
    "post /api/v1/me/tokens/{id}/revoke/": (
        "post",
        lambda w: f"/api/v1/me/tokens/{w.api_token}/revoke/",
        lambda w: w.operator,
    ),
    "post /api/v1/notifications/subscriptions/{id}/rotate-secret/": (
        "post",
        lambda w: f"/api/v1/notifications/subscriptions/{w.subscription}/rotate-secret/",
        lambda w: w.operator,
    ),
    "post /api/v1/notifications/deliveries/{id}/redeliver/": (
        "post",
        lambda w: f"/api/v1/notifications/deliveries/{w.delivery}/redeliver/",
        lambda w: w.operator,
    ),
}


def test_the_cases_cover_every_write_endpoint_with_a_body():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    with_body: set[str] = set()
    without: set[str] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method in {"post", "put", "patch"}:
                (with_body if "requestBody" in operation else without).add(f"{method} {path}")
    assert with_body == set(CASES)
    assert without == set(NO_PARAMETERS)


@pytest.mark.parametrize("endpoint", sorted([*CASES, *NO_PARAMETERS]))
def test_an_unknown_field_is_400_naming_it_and_changes_nothing(endpoint):
    world = World()
    method, path, who = NO_PARAMETERS[endpoint] if endpoint in NO_PARAMETERS else CASES[endpoint][:3]
    valid = CASES[endpoint][3](world) if endpoint in CASES else {}
    before = snapshot()
    body = {**valid, "sneaky": 1, "target": {"agent_ids": ["edge-1"]}}
    answer = getattr(who(world), method)(path(world), body, format="json")
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"] == "The request is not valid: unknown fields 'sneaky', 'target'."
    assert error["fields"]["sneaky"] == ["Unknown field."]
    assert error["fields"]["target"] == ["Unknown field."]
    assert snapshot() == before


class _WithReadOnly(serializers.Serializer[Any]):
    name = serializers.CharField()
    created_at = serializers.DateTimeField(read_only=True)


def test_a_read_only_field_sent_is_refused_with_its_own_message(rf):
    body = _WithReadOnly(data={"name": "x", "created_at": "2026-01-01T00:00:00Z", "nme": "y"})
    assert not body.is_valid()
    assert body.errors == {"created_at": ["Read-only: set by the server."], "nme": ["Unknown field."]}
    answer = errors.exception_handler(ValidationError(body.errors), {})
    assert answer is not None
    assert answer.data["error"]["message"] == (
        "The request is not valid: unknown field 'nme'; read-only field 'created_at'."
    )


def test_unknown_fields_are_named_next_to_the_other_errors():
    world = World()
    answer = world.operator.post("/api/v1/jobs/", {"kind": "bad kind!", "taget_all": True}, format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error["fields"]) == {"kind", "taget_all"}
    assert error["message"] == "The request is not valid: unknown field 'taget_all'."


@pytest.mark.parametrize("body", [None, {}])
def test_a_control_without_parameters_still_takes_no_body_or_an_empty_object(body):
    world = World()

    answer = world.operator.post("/api/v1/agents/edge-1/drain/", body, format="json")

    assert answer.status_code == 200, answer.content
    assert Agent.objects.get(pk="edge-1").admin_state == "draining"
