"""``/api/v1/notifications/``: subscriptions (secret masked, shown on create and rotation) and deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import Resolver404, include, path, resolve

from aegis_site import urls as site_urls
from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from notify import actions
from notify.models import Delivery, DeliveryAttempt, DeliveryState, Event, Subscription
from tests.support import client_for, staff_user

# The site's URLs, with the notification API included if the site does not include it (yet).
try:
    resolve("/api/v1/notifications/subscriptions/")
    urlpatterns: list[Any] = list(site_urls.urlpatterns)
except Resolver404:
    urlpatterns = [
        path("api/v1/", include(("notify.api.urls", "notify"), namespace="v1-notify")),
        *site_urls.urlpatterns,
    ]
handler404 = site_urls.handler404
handler500 = site_urls.handler500

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

SUBS = "/api/v1/notifications/subscriptions/"
DELIVERIES = "/api/v1/notifications/deliveries/"
ALL = (
    "notify.view_subscription",
    "notify.add_subscription",
    "notify.change_subscription",
    "notify.delete_subscription",
    "notify.view_delivery",
    "notify.change_delivery",
)
HOOK = {"name": "ops hook", "url": "https://hooks.example.com/aegis", "events": ["job.finished", "task.failed"]}


@pytest.fixture
def admin_client() -> Any:
    return client_for(staff_user("op", ALL))


def error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.content
    assert answer["Content-Type"] == "application/json"
    return dict(answer.json()["error"])


def make_delivery(subscription: Subscription, key: str, event_type: str = "job.finished", **fields: Any) -> Delivery:
    now = clock.now()
    event = Event.objects.create(type=event_type, key=key, occurred_at=now, payload={"job": {"id": 1}})
    fields = {"created_at": now, "next_attempt_at": now, "deadline": now + timedelta(hours=1), **fields}
    return Delivery.objects.create(subscription=subscription, event=event, **fields)


def test_create_shows_the_secret_once_then_masked(admin_client):
    created = admin_client.post(SUBS, HOOK, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    stored = Subscription.objects.get(pk=body["id"])
    assert body["secret"] == stored.secret
    assert stored.secret.startswith("whsec_")
    assert body["created_by"] == "op"
    assert body["target_kind"] == "webhook"
    assert body["enabled"] is True
    read = admin_client.get(f"{SUBS}{stored.pk}/").json()
    assert read["secret"] == f"whsec_…{stored.secret[-4:]}"
    listed = admin_client.get(SUBS).json()["results"]
    assert [item["secret"] for item in listed] == [read["secret"]]
    assert AuditEvent.objects.filter(action="subscription.create", actor_label="op").count() == 1


def test_bad_input_is_a_json_400_naming_the_field(admin_client):
    unknown = error(admin_client.post(SUBS, {**HOOK, "target": "x"}, format="json"), 400)
    assert unknown["fields"]["target"] == ["Unknown field."]
    assert "unknown field 'target'" in unknown["message"]
    secret = error(admin_client.post(SUBS, {**HOOK, "secret": "whsec_mine"}, format="json"), 400)
    assert "secret" in secret["fields"]
    assert (
        "events" in error(admin_client.post(SUBS, {**HOOK, "events": ["job.exploded"]}, format="json"), 400)["fields"]
    )
    assert "events" in error(admin_client.post(SUBS, {**HOOK, "events": []}, format="json"), 400)["fields"]
    assert "url" in error(admin_client.post(SUBS, {**HOOK, "url": "file:///etc/passwd"}, format="json"), 400)["fields"]
    email = {**HOOK, "target_kind": "email", "url": "", "emails": ["nobody"]}
    assert "emails" in error(admin_client.post(SUBS, email, format="json"), 400)["fields"]
    assert "enabled" in error(admin_client.post(SUBS, {**HOOK, "enabled": "yes"}, format="json"), 400)["fields"]
    labels = {**HOOK, "agent_labels": {"zone": 3}}
    assert "agent_labels" in error(admin_client.post(SUBS, labels, format="json"), 400)["fields"]
    assert not Subscription.objects.exists()


def test_update_partial_update_rotate_and_delete(admin_client):
    subscription = actions.create_subscription(Actor("tester"), **HOOK, job_kinds=["deploy"])
    url = f"{SUBS}{subscription.pk}/"
    patched = admin_client.patch(url, {"enabled": False, "agent_labels": {"zone": ["a", "b"]}}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["enabled"] is False
    assert patched.json()["job_kinds"] == ["deploy"]
    assert patched.json()["agent_labels"] == {"zone": ["a", "b"]}
    replaced = admin_client.put(
        url,
        {"name": "mail", "target_kind": "email", "emails": ["a@example.com"], "events": ["agent.offline"]},
        format="json",
    )
    assert replaced.status_code == 200, replaced.content
    body = replaced.json()
    assert (body["url"], body["job_kinds"], body["agent_labels"], body["enabled"]) == ("", [], {}, True)
    assert "emails" in error(admin_client.patch(url, {"emails": []}, format="json"), 400)["fields"]
    assert "id" in error(admin_client.patch(url, {"id": 5}, format="json"), 400)["fields"]
    old = Subscription.objects.get(pk=subscription.pk).secret
    rotated = admin_client.post(f"{url}rotate-secret/")
    assert rotated.status_code == 201, rotated.content
    assert rotated.json()["secret"] == Subscription.objects.get(pk=subscription.pk).secret != old
    assert "x" in error(admin_client.post(f"{url}rotate-secret/", {"x": 1}, format="json"), 400)["fields"]
    assert admin_client.delete(url).status_code == 204
    assert error(admin_client.get(url), 404)["code"] == "not_found"
    assert AuditEvent.objects.filter(action="subscription.delete").count() == 1


def test_deliveries_list_filters_and_attempt_log(admin_client):
    hook = actions.create_subscription(Actor("tester"), **HOOK)
    other = actions.create_subscription(Actor("tester"), **{**HOOK, "name": "other"})
    dead = make_delivery(hook, "job.finished:1", state=DeliveryState.DEAD, attempts=2, last_status=502)
    DeliveryAttempt.objects.create(delivery=dead, at=clock.now(), status=502, duration_ms=12)
    DeliveryAttempt.objects.create(delivery=dead, at=clock.now() + timedelta(seconds=5), error="timed out")
    failed = make_delivery(hook, "task.failed:9", event_type="task.failed")
    make_delivery(other, "job.finished:2")

    def ids(query: str) -> set[str]:
        answer = admin_client.get(f"{DELIVERIES}{query}")
        assert answer.status_code == 200, answer.content
        return {item["id"] for item in answer.json()["results"]}

    assert len(ids("")) == 3
    assert ids(f"?subscription={hook.pk}") == {dead.pk, failed.pk}
    assert ids("?state=dead") == {dead.pk}
    assert ids("?event_type=task.failed") == {failed.pk}
    assert error(admin_client.get(f"{DELIVERIES}?state=lost"), 400)["code"] == "invalid"
    assert error(admin_client.get(f"{DELIVERIES}?subscription=x"), 400)["code"] == "invalid"
    detail = admin_client.get(f"{DELIVERIES}{dead.pk}/").json()
    assert detail["event_type"] == "job.finished"
    assert detail["state"] == "dead"
    assert detail["last_status"] == 502
    assert [(entry["status"], entry["error"]) for entry in detail["attempt_log"]] == [(None, "timed out"), (502, "")]
    assert error(admin_client.get(f"{DELIVERIES}msg_nope/"), 404)["code"] == "not_found"


def test_redeliver(admin_client, frozen_clock):
    hook = actions.create_subscription(Actor("tester"), **HOOK)
    dead = make_delivery(hook, "job.finished:1", state=DeliveryState.DEAD, attempts=3)
    leader = make_delivery(hook, "task.failed:1", event_type="task.failed", state=DeliveryState.SUCCEEDED)
    merged = make_delivery(
        hook, "task.failed:2", event_type="task.failed", state=DeliveryState.MERGED, merged_into=leader
    )
    frozen_clock.advance(600)
    again = admin_client.post(f"{DELIVERIES}{dead.pk}/redeliver/")
    assert again.status_code == 200, again.content
    assert again.json()["id"] == dead.pk
    assert again.json()["state"] == "pending"
    assert Delivery.objects.get(pk=dead.pk).next_attempt_at == clock.now()
    refused = error(admin_client.post(f"{DELIVERIES}{merged.pk}/redeliver/"), 409)
    assert refused["code"] == "invalid_state"
    assert leader.pk in refused["message"]
    assert (
        "force"
        in error(admin_client.post(f"{DELIVERIES}{dead.pk}/redeliver/", {"force": True}, format="json"), 400)["fields"]
    )
    assert AuditEvent.objects.filter(action="delivery.redeliver", object_id=dead.pk).count() == 1


def test_permissions(admin_client):
    hook = actions.create_subscription(Actor("tester"), **HOOK)
    dead = make_delivery(hook, "job.finished:1", state=DeliveryState.DEAD)
    reader = client_for(staff_user("reader", ("notify.view_subscription", "notify.view_delivery")))
    assert reader.get(SUBS).status_code == 200
    assert reader.get(DELIVERIES).status_code == 200
    assert error(reader.post(SUBS, HOOK, format="json"), 403)["code"] == "permission_denied"
    assert error(reader.patch(f"{SUBS}{hook.pk}/", {"enabled": False}, format="json"), 403)
    assert error(reader.post(f"{SUBS}{hook.pk}/rotate-secret/"), 403)
    assert error(reader.delete(f"{SUBS}{hook.pk}/"), 403)
    assert error(reader.post(f"{DELIVERIES}{dead.pk}/redeliver/"), 403)
    assert Delivery.objects.get(pk=dead.pk).state == DeliveryState.DEAD
    nobody = client_for(staff_user("nobody"))
    assert error(nobody.get(SUBS), 403)
    assert error(client_for(staff_user("outsider", ALL, is_staff=False)).get(SUBS), 403)
    assert error(client_for(None).get(SUBS), 401)["code"] == "not_authenticated"
