"""Operators' agent endpoints: list and filters, detail, labels and admin state, credentials, enrolment tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from registry import actions as registry_actions
from registry.models import AdminState, Agent, AgentCredential, Connectivity, EnrolmentToken
from tests.support import client_for

pytestmark = pytest.mark.django_db

ALL = [
    "view_agent",
    "change_agent",
    "add_agent",
    "view_agentcredential",
    "add_agentcredential",
    "change_agentcredential",
    "view_enrolmenttoken",
]


def staff(*codenames: str, username: str = "op") -> User:
    user = User.objects.create_user(username, password="pw-for-tests-only", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="registry", codename__in=codenames))
    return user


@pytest.fixture
def fleet(make_agent):
    now = clock.now()
    make_agent("web-1", labels={"role": "web", "zone": "a"}, capabilities=["echo", "shell"], last_seen_at=now)
    make_agent(
        "web-2", labels={"role": "web", "zone": "b"}, capabilities=["echo"], last_seen_at=now - timedelta(hours=2)
    )
    make_agent(
        "db-1", online=False, labels={"role": "db"}, capabilities=["gpu"], admin_state="draining", last_seen_at=None
    )


@pytest.fixture
def admin_client() -> APIClient:
    return client_for(staff(*ALL))


def ids(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.content
    return [agent["id"] for agent in answer.json()["results"]]


def test_list_and_filters(fleet, admin_client):
    assert ids(admin_client.get("/api/v1/agents/")) == ["db-1", "web-1", "web-2"]
    assert ids(admin_client.get("/api/v1/agents/?connectivity=online")) == ["web-1", "web-2"]
    assert ids(admin_client.get("/api/v1/agents/?admin_state=draining")) == ["db-1"]
    assert ids(admin_client.get("/api/v1/agents/?label=role=web&label=zone=b")) == ["web-2"]
    assert ids(admin_client.get("/api/v1/agents/?capability=shell")) == ["web-1"]
    cutoff = (clock.now() - timedelta(hours=1)).isoformat()
    assert ids(admin_client.get("/api/v1/agents/", {"last_seen_before": cutoff})) == ["web-2"]
    assert ids(admin_client.get("/api/v1/agents/", {"last_seen_after": cutoff})) == ["web-1"]
    assert ids(admin_client.get("/api/v1/agents/?search=db")) == ["db-1"]
    bad = admin_client.get("/api/v1/agents/?connectivity=sideways")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid"
    assert admin_client.get("/api/v1/agents/?label=novalue").status_code == 400


def test_pages_are_cursor_paginated_and_capped(fleet, admin_client, settings):
    settings.API_MAX_PAGE_SIZE = 2
    first = admin_client.get("/api/v1/agents/?page_size=100").json()
    assert [agent["id"] for agent in first["results"]] == ["db-1", "web-1"]
    second = admin_client.get(first["next"]).json()
    assert [agent["id"] for agent in second["results"]] == ["web-2"]
    assert second["next"] is None


def test_detail_and_unknown_agent(fleet, admin_client):
    detail = admin_client.get("/api/v1/agents/web-1/").json()
    assert detail["labels"] == {"role": "web", "zone": "a"}
    assert detail["connectivity"] == "online"
    missing = admin_client.get("/api/v1/agents/nobody/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_patch_changes_labels_and_admin_state_but_not_presence(fleet, admin_client):
    refused = admin_client.patch(
        "/api/v1/agents/web-1/",
        {"labels": {"role": "api"}, "admin_state": "draining", "connectivity": "offline", "version": "evil"},
        format="json",
    )
    assert refused.status_code == 400  # not the operator's to set: refused, not quietly dropped
    assert refused.json()["error"]["fields"] == {"connectivity": ["Unknown field."], "version": ["Unknown field."]}
    assert Agent.objects.get(pk="web-1").labels == {"role": "web", "zone": "a"}
    answer = admin_client.patch(
        "/api/v1/agents/web-1/", {"labels": {"role": "api"}, "admin_state": "draining"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    agent = Agent.objects.get(pk="web-1")
    assert (agent.labels, agent.admin_state) == ({"role": "api"}, AdminState.DRAINING)
    assert (agent.connectivity, agent.version) == (Connectivity.ONLINE, "")  # not the operator's to set
    assert {"agent.update", "agent.drain"} <= set(AuditEvent.objects.values_list("action", flat=True))
    bad = admin_client.patch("/api/v1/agents/web-1/", {"labels": {"bad key!": 1}}, format="json")
    assert bad.status_code == 400


@pytest.mark.parametrize(("verb", "state"), [("drain", "draining"), ("disable", "disabled"), ("enable", "active")])
def test_admin_state_actions(fleet, admin_client, verb, state):
    answer = admin_client.post(f"/api/v1/agents/web-2/{verb}/")
    assert answer.status_code == 200
    assert answer.json()["admin_state"] == state
    assert Agent.objects.get(pk="web-2").admin_state == state
    assert AuditEvent.objects.filter(object_id="web-2", action__startswith="agent.").exists()


def test_rotate_token_shows_the_new_token_once_and_revokes_the_old(fleet, admin_client):
    _old, old_token = registry_actions.issue_token("web-1", Actor("tester"))
    answer = admin_client.post("/api/v1/agents/web-1/rotate-token/")
    assert answer.status_code == 201
    new_token = answer.json()["token"]
    assert registry_actions.authenticate_token(old_token) is None
    assert registry_actions.authenticate_token(new_token).pk == "web-1"
    listed = admin_client.get("/api/v1/agents/web-1/credentials/").json()
    assert len(listed) == 2
    assert all("token_hash" not in item and "token" not in item for item in listed)
    live = next(item for item in listed if item["revoked_at"] is None)
    revoked = admin_client.post(f"/api/v1/agents/web-1/credentials/{live['id']}/revoke/")
    assert revoked.status_code == 200
    assert registry_actions.authenticate_token(new_token) is None
    other = AgentCredential.objects.filter(agent_id="web-1").first()
    assert admin_client.post(f"/api/v1/agents/web-2/credentials/{other.pk}/revoke/").status_code == 404


def test_enrolment_tokens(admin_client):
    created = admin_client.post(
        "/api/v1/enrolment-tokens/", {"name": "rack 4", "uses": 3, "labels": {"rack": "4"}}, format="json"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["token"].startswith("aen_")
    assert body["uses_left"] == 3
    listed = admin_client.get("/api/v1/enrolment-tokens/").json()["results"]
    assert [item["name"] for item in listed] == ["rack 4"]
    assert "token" not in listed[0]
    assert admin_client.post(f"/api/v1/enrolment-tokens/{body['id']}/revoke/").status_code == 200
    assert EnrolmentToken.objects.get().revoked_at is not None
    enrol = APIClient().post("/api/v1/agent/enrol/", {"enrolment_token": body["token"], "agent_id": "x"}, format="json")
    assert enrol.status_code == 403


def test_permissions(fleet):
    assert APIClient().get("/api/v1/agents/").status_code == 401
    not_staff = User.objects.create_user("visitor", password="pw-for-tests-only")
    assert client_for(not_staff).get("/api/v1/agents/").status_code == 403
    viewer = client_for(staff("view_agent", username="viewer"))
    assert viewer.get("/api/v1/agents/").status_code == 200
    for path in ("/api/v1/agents/web-1/drain/", "/api/v1/agents/web-1/rotate-token/", "/api/v1/enrolment-tokens/"):
        denied = viewer.post(path, {}, format="json")
        assert denied.status_code == 403, path
        assert denied.json()["error"]["code"] == "permission_denied"
    assert viewer.patch("/api/v1/agents/web-1/", {"labels": {}}, format="json").status_code == 403
    assert Agent.objects.get(pk="web-1").admin_state == AdminState.ACTIVE
    assert not AuditEvent.objects.exists()


def test_operator_jwt_login_and_use(fleet):
    staff(*ALL, username="jwt-op")
    login = APIClient().post(
        "/api/v1/auth/token/", {"username": "jwt-op", "password": "pw-for-tests-only"}, format="json"
    )
    assert login.status_code == 200, login.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {login.json()['access']}")
    assert ids(client.get("/api/v1/agents/?search=web-1")) == ["web-1"]
    wrong = APIClient().post("/api/v1/auth/token/", {"username": "jwt-op", "password": "nope"}, format="json")
    assert wrong.status_code == 401
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Bearer aaa.bbb.ccc")
    assert forged.get("/api/v1/agents/").status_code == 401
