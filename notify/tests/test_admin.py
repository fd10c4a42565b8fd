"""The notification pages of the admin: create and change through notify.actions, rotate, redeliver, permissions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.test import Client
from django.urls import reverse

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from notify import actions
from notify.models import Delivery, DeliveryAttempt, DeliveryState, Event, Subscription
from tests.support import staff_user

pytestmark = pytest.mark.django_db

HOOK = {"name": "ops hook", "url": "https://hooks.example.com/aegis", "events": ["job.finished"]}
ALL = (
    "notify.view_subscription",
    "notify.add_subscription",
    "notify.change_subscription",
    "notify.view_delivery",
    "notify.change_delivery",
    "notify.view_event",
)


def browser(*perms: str, username: str = "op") -> Client:
    client = Client()
    client.force_login(staff_user(username, perms))
    return client


def make_delivery(subscription: Subscription, key: str, **fields: Any) -> Delivery:
    now = clock.now()
    event = Event.objects.create(type="job.finished", key=key, occurred_at=now, payload={"job": {"id": 7}})
    fields = {"created_at": now, "next_attempt_at": now, "deadline": now + timedelta(hours=1), **fields}
    return Delivery.objects.create(subscription=subscription, event=event, **fields)


def form(**fields: Any) -> dict[str, Any]:
    data = {
        "name": "ops hook",
        "target_kind": "webhook",
        "url": "https://hooks.example.com/aegis",
        "emails": "[]",
        "events": ["job.finished", "agent.offline"],
        "job_kinds": "[]",
        "agent_labels": "{}",
        "enabled": "on",
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def test_add_goes_through_the_action_sets_the_creator_and_audits():
    client = browser(*ALL)
    answer = client.post(reverse("admin:notify_subscription_add"), form(agent_labels='{"zone": ["a"]}'))
    assert answer.status_code == 302, answer.content.decode()[:3000]
    subscription = Subscription.objects.get()
    assert subscription.created_by is not None
    assert subscription.created_by.username == "op"
    assert subscription.events == ["job.finished", "agent.offline"]
    assert subscription.agent_labels == {"zone": ["a"]}
    assert AuditEvent.objects.filter(action="subscription.create", actor_label="op").count() == 1


def test_the_form_refuses_what_the_api_refuses():
    client = browser(*ALL)
    answer = client.post(reverse("admin:notify_subscription_add"), form(target_kind="email", url=""))
    assert answer.status_code == 200
    assert "An e-mail target needs at least one address." in answer.content.decode()
    answer = client.post(reverse("admin:notify_subscription_add"), form(url="ftp://x.example.com/"))
    assert "Use an absolute http:// or https:// URL." in answer.content.decode()
    assert not Subscription.objects.exists()


def test_change_page_masks_the_secret_lists_recent_deliveries_and_saves_through_the_action():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    delivery = make_delivery(subscription, "job.finished:7", state=DeliveryState.DEAD, last_status=502)
    client = browser(*ALL)
    url = reverse("admin:notify_subscription_change", args=[subscription.pk])
    page = client.get(url).content.decode()
    assert subscription.secret not in page
    assert actions.mask(subscription.secret) in page
    assert delivery.pk in page
    listing = client.get(reverse("admin:notify_subscription_changelist")).content.decode()
    assert "dead" in listing  # the last delivery's state
    answer = client.post(url, form(name="renamed", enabled=None))
    assert answer.status_code == 302, answer.content.decode()[:3000]
    stored = Subscription.objects.get(pk=subscription.pk)
    assert (stored.name, stored.enabled, stored.secret) == ("renamed", False, subscription.secret)
    assert AuditEvent.objects.filter(action="subscription.update").count() == 1


def test_rotate_secret_shows_the_new_secret_once():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    client = browser(*ALL)
    answer = client.post(
        reverse("admin:notify_subscription_changelist"),
        {"action": "rotate_secret", "_selected_action": [subscription.pk]},
    )
    assert answer.status_code == 200
    secret = Subscription.objects.get(pk=subscription.pk).secret
    assert secret != subscription.secret
    assert secret in answer.content.decode()
    assert "no-cache" in answer["Cache-Control"] or "max-age=0" in answer["Cache-Control"]


def test_delivery_page_shows_the_attempt_log_and_redeliver_works():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    dead = make_delivery(subscription, "job.finished:7", state=DeliveryState.DEAD, attempts=1)
    DeliveryAttempt.objects.create(delivery=dead, at=clock.now(), status=503, error="", duration_ms=40)
    leader = make_delivery(subscription, "job.finished:8", state=DeliveryState.SUCCEEDED)
    merged = make_delivery(subscription, "job.finished:9", state=DeliveryState.MERGED, merged_into=leader)
    client = browser(*ALL)
    page = client.get(reverse("admin:notify_delivery_change", args=[quote(dead.pk)])).content.decode()
    assert "503" in page
    assert "attempts (newest first)" in page.lower()
    listing = client.get(reverse("admin:notify_delivery_changelist") + "?state__exact=dead")
    assert dead.pk in listing.content.decode()
    assert leader.pk not in listing.content.decode()
    answer = client.post(
        reverse("admin:notify_delivery_changelist"),
        {"action": "redeliver", "_selected_action": [dead.pk, merged.pk]},
        follow=True,
    )
    text = answer.content.decode()
    assert "1 delivery(ies) due again." in text
    assert "redeliver that one" in text
    assert Delivery.objects.get(pk=dead.pk).state == DeliveryState.PENDING
    assert Delivery.objects.get(pk=merged.pk).state == DeliveryState.MERGED


def test_permissions():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    dead = make_delivery(subscription, "job.finished:7", state=DeliveryState.DEAD)
    reader = browser("notify.view_subscription", "notify.view_delivery", username="reader")
    assert reader.get(reverse("admin:notify_delivery_change", args=[quote(dead.pk)])).status_code == 200
    assert reader.get(reverse("admin:notify_subscription_add")).status_code == 403
    reader.post(reverse("admin:notify_delivery_changelist"), {"action": "redeliver", "_selected_action": [dead.pk]})
    assert Delivery.objects.get(pk=dead.pk).state == DeliveryState.DEAD
    reader.post(
        reverse("admin:notify_subscription_changelist"),
        {"action": "rotate_secret", "_selected_action": [subscription.pk]},
    )
    assert Subscription.objects.get(pk=subscription.pk).secret == subscription.secret
    assert browser(username="nobody").get(reverse("admin:notify_delivery_changelist")).status_code == 403


def test_the_subscription_page_links_each_delivery_even_when_its_id_looks_escaped():
    """Admin URLs escape "_" (``_5F``): an id like ``msg_26…`` must be quoted in a link, or ``_26`` reads as "&"."""
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    delivery = make_delivery(subscription, "job.finished:7", id="msg_26" + "a" * 30, state=DeliveryState.DEAD)
    client = browser(*ALL)
    page = client.get(reverse("admin:notify_subscription_change", args=[subscription.pk])).content.decode()
    link = reverse("admin:notify_delivery_change", args=[quote(delivery.pk)])
    assert link in page
    assert client.get(link).status_code == 200
