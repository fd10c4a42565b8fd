"""The audit log over HTTP, and operators' personal API tokens: issued once, listed without secrets, revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor, record
from aegis_site.core.models import AuditEvent
from aegis_site.core.tokens import hash_token
from ops import actions as ops_actions
from ops.models import ApiToken
from tasks.models import Job
from tests.support import client_for, staff_user

pytestmark = pytest.mark.django_db

AUDIT = "/api/v1/audit/"
TOKENS = "/api/v1/me/tokens/"


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()  # the rate limits count in the cache, which outlives each test's database


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def auditor() -> User:
    return staff_user("auditor", perms=("core.view_auditevent",))


@pytest.fixture
def alice() -> User:
    return staff_user("alice")


# --- audit log -------------------------------------------------------------------------------


@pytest.fixture
def trail(alice: User) -> list[AuditEvent]:
    return [
        record(Actor.of_user(alice), "job.submit", "job", 1, kind="echo"),
        record(Actor.agent("a1"), "agent.hello", "agent", "a1"),
        record(Actor.of_user(alice), "job.cancel", "job", 1, force=False),
        record(Actor.system("expiry"), "job.cancel", "job", 2),
    ]


def test_audit_list_is_newest_first(auditor, trail):
    response = client_for(auditor).get(AUDIT)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [event["id"] for event in results] == [event.pk for event in reversed(trail)]
    assert results[1] == {
        "id": trail[2].pk,
        "actor": "alice",
        "actor_id": trail[2].actor_id,
        "action": "job.cancel",
        "object_type": "job",
        "object_id": "1",
        "data": {"force": False},
        "created_at": results[1]["created_at"],
    }
    assert results[1]["actor_id"] is not None
    assert results[0]["actor_id"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=job.cancel", [3, 2]),
        ("object_type=agent", [1]),
        ("object_type=job&object_id=1", [2, 0]),
        ("actor=alice", [2, 0]),
        ("actor=system:expiry", [3]),
        ("actor=nobody", []),
    ],
)
def test_audit_list_filters(auditor, trail, query, expected):
    response = client_for(auditor).get(f"{AUDIT}?{query}")

    assert response.status_code == 200
    assert [event["id"] for event in response.json()["results"]] == [trail[i].pk for i in expected]


@pytest.mark.parametrize("query", ["created_after=", "created_before=last-week"])
def test_audit_list_refuses_malformed_times(auditor, query):
    response = client_for(auditor).get(f"{AUDIT}?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert query.split("=")[0] in response.json()["error"]["fields"]


def test_audit_list_filters_by_time(auditor, trail):
    AuditEvent.objects.filter(pk=trail[0].pk).update(created_at=datetime(2020, 1, 1, tzinfo=UTC))
    client = client_for(auditor)

    old = client.get(AUDIT, {"created_before": "2021-01-01T00:00:00Z"}).json()["results"]
    recent = client.get(AUDIT, {"created_after": "2021-01-01T00:00:00Z"}).json()["results"]

    assert [event["id"] for event in old] == [trail[0].pk]
    assert [event["id"] for event in recent] == [event.pk for event in reversed(trail[1:])]


def test_audit_list_pages_with_a_cursor(auditor, trail, settings):
    settings.API_PAGE_SIZE = 3
    client = client_for(auditor)

    first = client.get(AUDIT).json()
    second = client.get(first["next"]).json()

    assert [event["id"] for event in first["results"]] == [trail[3].pk, trail[2].pk, trail[1].pk]
    assert [event["id"] for event in second["results"]] == [trail[0].pk]
    assert second["next"] is None


def test_audit_list_is_read_only(trail):
    client = client_for(User.objects.create_superuser("root"))  # holds every permission: only the route refuses

    assert client.post(AUDIT, {"action": "x"}, format="json").status_code == 405
    assert client.delete(f"{AUDIT}{trail[0].pk}/").status_code == 404
    assert AuditEvent.objects.count() == 4


def test_audit_needs_the_view_permission(trail):
    assert APIClient().get(AUDIT).status_code == 401
    forbidden = client_for(staff_user("bob", perms=("tasks.view_job",))).get(AUDIT)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "permission_denied"
    non_staff = client_for(staff_user("eve", perms=("core.view_auditevent",), is_staff=False))
    assert non_staff.get(AUDIT).status_code == 403


# --- personal tokens -------------------------------------------------------------------------


def test_create_token_shows_the_secret_once_and_stores_only_its_hash(alice, frozen_clock):
    client = client_for(alice)

    response = client.post(TOKENS, {"name": "deploy script", "ttl_days": 30}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    token = body["token"]
    assert token.startswith("aeo_")
    assert set(body) == {"id", "name", "token_prefix", "created_at", "expires_at", "revoked_at", "token"}
    stored = ApiToken.objects.get()
    assert (stored.pk, stored.user, stored.name) == (body["id"], alice, "deploy script")
    assert stored.token_hash == hash_token(token)
    assert body["token_prefix"] == token[:12] == stored.token_prefix
    assert stored.expires_at == frozen_clock.current + timedelta(days=30)
    assert body["revoked_at"] is None
    [event] = AuditEvent.objects.filter(action="api_token.issue")
    assert (event.actor_label, event.object_id) == ("alice", str(stored.pk))
    assert token not in str(event.data)

    listed = client.get(TOKENS).json()["results"]
    assert [item["id"] for item in listed] == [stored.pk]
    assert "token" not in listed[0]
    assert "token_hash" not in listed[0]


def test_token_without_ttl_does_not_expire(alice):
    response = client_for(alice).post(TOKENS, {"name": "ci"}, format="json")

    assert response.status_code == 201
    assert response.json()["expires_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"name": "ci", "ttl_days": 0}, "ttl_days")],
)
def test_invalid_token_body_is_400(alice, body, field):
    response = client_for(alice).post(TOKENS, body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert field in response.json()["error"]["fields"]
    assert not ApiToken.objects.exists()


def test_operators_see_only_their_own_tokens(alice):
    bob = staff_user("bob")
    ops_actions.issue_api_token(bob, "bob's", Actor.of_user(bob))
    mine, _ = ops_actions.issue_api_token(alice, "mine", Actor.of_user(alice))

    listed = client_for(alice).get(TOKENS).json()["results"]

    assert [item["name"] for item in listed] == ["mine"]
    assert listed[0]["id"] == mine.pk


def test_revoke_marks_the_token_and_is_audited(alice, frozen_clock):
    token, _ = ops_actions.issue_api_token(alice, "old", Actor.of_user(alice))

    response = client_for(alice).post(f"{TOKENS}{token.pk}/revoke/")

    assert response.status_code == 200
    assert response.json()["id"] == token.pk
    assert response.json()["revoked_at"] is not None
    token.refresh_from_db()
    assert token.revoked_at == frozen_clock.current
    assert AuditEvent.objects.filter(action="api_token.revoke", object_id=str(token.pk), actor_label="alice").exists()


@pytest.mark.parametrize("token_id", ["other", 999999, 9999999999999999999])
def test_revoking_another_users_or_an_unknown_token_is_404(alice, token_id):
    bob = staff_user("bob")
    bobs, _ = ops_actions.issue_api_token(bob, "bob's", Actor.of_user(bob))
    target = bobs.pk if token_id == "other" else token_id

    response = client_for(alice).post(f"{TOKENS}{target}/revoke/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    bobs.refresh_from_db()
    assert bobs.revoked_at is None
    assert not AuditEvent.objects.filter(action="api_token.revoke").exists()


def test_any_staff_user_manages_tokens_but_not_anonymous_or_non_staff():
    assert client_for(staff_user("no-perms")).get(TOKENS).status_code == 200
    assert APIClient().post(TOKENS, {"name": "x"}, format="json").status_code == 401
    non_staff = client_for(staff_user("eve", is_staff=False))
    assert non_staff.get(TOKENS).status_code == 403
    assert non_staff.post(TOKENS, {"name": "x"}, format="json").status_code == 403
    assert not ApiToken.objects.exists()


def test_a_personal_token_authenticates_as_its_user_until_revoked():
    ops_user = staff_user("ops", perms=("tasks.view_job", "tasks.add_job"))
    issued = client_for(ops_user).post(TOKENS, {"name": "script"}, format="json").json()
    with_token = bearer(issued["token"])

    listed = with_token.get("/api/v1/jobs/")
    created = with_token.post(
        "/api/v1/jobs/", {"kind": "echo", "mode": "any", "target_all": True, "allow_no_agents": True}, format="json"
    )
    assert listed.status_code == 200
    assert created.status_code == 201, created.json()
    assert created.json()["created_by"] == "ops"
    assert Job.objects.get().created_by == ops_user

    revoked = with_token.post(f"{TOKENS}{issued['id']}/revoke/")
    assert revoked.status_code == 200

    refused = with_token.get("/api/v1/jobs/")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}
    assert bearer("aeo_not-a-real-token").get("/api/v1/jobs/").status_code == 401


def test_an_expired_token_is_refused(frozen_clock):
    ops_user = staff_user("ops", perms=("tasks.view_job",))
    _, token = ops_actions.issue_api_token(ops_user, "short", Actor.of_user(ops_user), ttl=timedelta(days=1))

    assert bearer(token).get("/api/v1/jobs/").status_code == 200
    frozen_clock.advance(86_401)
    assert bearer(token).get("/api/v1/jobs/").status_code == 401
