"""Subscription writes and redelivery (notify.actions): what they check, what they write, what they audit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.errors import InvalidTransition, NotFound
from aegis_site.core.models import AuditEvent
from notify import actions
from notify.models import Delivery, DeliveryState, Event, Subscription

pytestmark = pytest.mark.django_db

HOOK = {"name": "ops hook", "url": "https://hooks.example.com/aegis", "events": ["job.finished"]}


def refused(field: str, **fields: object) -> str:
    with pytest.raises(actions.SubscriptionRefused) as caught:
        actions.create_subscription(Actor("tester"), **{**HOOK, **fields})
    assert caught.value.field == field, caught.value
    return str(caught.value)


def make_delivery(subscription: Subscription, key: str = "job.finished:1", **fields: object) -> Delivery:
    now = clock.now()
    event = Event.objects.create(type="job.finished", key=key, occurred_at=now, payload={"job": {"id": 1}})
    fields = {"created_at": now, "next_attempt_at": now, "deadline": now + timedelta(hours=1), **fields}
    return Delivery.objects.create(subscription=subscription, event=event, **fields)


def test_create_sets_creator_secret_and_audits_without_the_secret():
    user = User.objects.create_user("alice", is_staff=True)
    subscription = actions.create_subscription(Actor.of_user(user), **HOOK, job_kinds=["deploy"])
    assert subscription.created_by == user
    assert subscription.secret.startswith("whsec_")
    assert subscription.events == ["job.finished"]
    audit = AuditEvent.objects.get(action="subscription.create")
    assert audit.object_id == str(subscription.pk)
    assert audit.data["url"] == HOOK["url"]
    assert subscription.secret not in str(audit.data)
    assert actions.mask(subscription.secret) == f"whsec_…{subscription.secret[-4:]}"


def test_create_refuses_what_cannot_be_sent():
    assert "at least one" in refused("events", events=[])
    assert "'job.exploded'" in refused("events", events=["job.finished", "job.exploded"])
    assert "http" in refused("url", url="ftp://files.example.com/x")
    assert "URL" in refused("url", url="")
    assert refused("name", name="  ")
    assert "e-mail" in refused("emails", target_kind="email", url="", emails=[])
    assert "not-an-address" in refused("emails", target_kind="email", url="", emails=["not-an-address"])
    assert refused("url", target_kind="email", emails=["ops@example.com"])  # an e-mail target has no URL
    assert refused("emails", emails=["ops@example.com"])  # nor a webhook addresses
    assert refused("target_kind", target_kind="pigeon")
    assert refused("job_kinds", job_kinds=["ok", 5])
    assert refused("job_kinds", job_kinds="deploy")
    assert refused("agent_labels", agent_labels={"zone": 1})
    assert refused("agent_labels", agent_labels={"zone": []})
    assert refused("agent_labels", agent_labels=["zone"])
    assert refused("enabled", enabled="yes")
    assert not Subscription.objects.exists()
    assert not AuditEvent.objects.exists()


def test_email_and_slack_targets_and_label_selectors():
    mail = actions.create_subscription(
        Actor("tester"),
        name="mail",
        target_kind="email",
        emails=["a@example.com", "a@example.com", "b@example.com"],
        events=["agent.offline", "agent.offline"],
        agent_labels={"zone": ["eu-1", "eu-2"], "role": "web"},
    )
    assert mail.emails == ["a@example.com", "b@example.com"]
    assert mail.events == ["agent.offline"]
    assert mail.url == ""
    assert mail.agent_labels == {"zone": ["eu-1", "eu-2"], "role": "web"}
    slack = actions.create_subscription(Actor("tester"), **{**HOOK, "target_kind": "slack"})
    assert slack.target_kind == "slack"


def test_update_checks_the_whole_subscription_and_audits_the_change():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    with pytest.raises(actions.SubscriptionRefused) as caught:
        actions.update_subscription(subscription.pk, Actor("tester"), target_kind="email")  # no addresses given
    assert caught.value.field == "emails"
    changed = actions.update_subscription(
        subscription.pk, Actor("tester"), target_kind="email", emails=["ops@example.com"]
    )
    assert (changed.target_kind, changed.url, changed.emails) == ("email", "", ["ops@example.com"])
    audit = AuditEvent.objects.get(action="subscription.update")
    assert set(audit.data) == {"target_kind", "url", "emails"}
    actions.update_subscription(subscription.pk, Actor("tester"), name="ops hook")  # nothing changes: no row
    assert AuditEvent.objects.filter(action="subscription.update").count() == 1
    with pytest.raises(actions.SubscriptionRefused):
        actions.update_subscription(subscription.pk, Actor("tester"), secret="whsec_mine")
    with pytest.raises(NotFound):
        actions.update_subscription(999_999, Actor("tester"), name="x")


def test_enable_disable_rotate_and_delete():
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    old = subscription.secret
    assert actions.set_enabled(subscription.pk, False, Actor("tester")).enabled is False
    assert Subscription.objects.get(pk=subscription.pk).enabled is False
    actions.set_enabled(subscription.pk, True, Actor("tester"))
    _rotated, secret = actions.rotate_secret(subscription.pk, Actor("tester"))
    assert secret != old
    assert secret.startswith("whsec_")
    assert Subscription.objects.get(pk=subscription.pk).secret == secret
    assert secret not in str(list(AuditEvent.objects.values_list("data", flat=True)))
    make_delivery(subscription)
    actions.delete_subscription(subscription.pk, Actor("tester"))
    assert not Delivery.objects.exists()
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "subscription.create",
        "subscription.disable",
        "subscription.enable",
        "subscription.rotate_secret",
        "subscription.delete",
    ]


def test_redeliver_makes_a_dead_or_delivered_one_due_with_the_same_id(frozen_clock, settings):
    settings.NOTIFY_DEADLINE_S = 600.0
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    dead = make_delivery(subscription, state=DeliveryState.DEAD, attempts=7, last_status=502)
    frozen_clock.advance(3600)
    again = actions.redeliver(dead.pk, Actor("tester"))
    assert again.pk == dead.pk
    stored = Delivery.objects.get(pk=dead.pk)
    assert stored.state == DeliveryState.PENDING
    assert stored.next_attempt_at == clock.now()
    assert stored.deadline == clock.now() + timedelta(seconds=600)
    assert stored.lease_until is None
    assert stored.attempts == 7  # the history stays
    audit = AuditEvent.objects.get(action="delivery.redeliver")
    assert (audit.object_id, audit.data) == (dead.pk, {"previous": "dead"})
    done = make_delivery(subscription, key="job.finished:2", state=DeliveryState.SUCCEEDED, delivered_at=clock.now())
    assert actions.redeliver(done.pk, Actor("tester")).delivered_at is None


def test_redeliver_refuses_a_merged_delivery_naming_its_leader_and_one_in_flight(frozen_clock):
    subscription = actions.create_subscription(Actor("tester"), **HOOK)
    leader = make_delivery(subscription, key="task.failed:1", state=DeliveryState.SUCCEEDED)
    merged = make_delivery(subscription, key="task.failed:2", state=DeliveryState.MERGED, merged_into=leader)
    with pytest.raises(InvalidTransition) as caught:
        actions.redeliver(merged.pk, Actor("tester"))
    assert leader.pk in str(caught.value)
    assert Delivery.objects.get(pk=merged.pk).state == DeliveryState.MERGED
    sending = make_delivery(
        subscription, key="job.finished:3", lease_until=clock.now() + timedelta(seconds=30), attempts=1
    )
    with pytest.raises(InvalidTransition, match="being sent"):
        actions.redeliver(sending.pk, Actor("tester"))
    frozen_clock.advance(60)  # the lease ran out: the notifier died mid-send
    assert actions.redeliver(sending.pk, Actor("tester")).lease_until is None
    with pytest.raises(NotFound):
        actions.redeliver("msg_" + "0" * 32, Actor("tester"))
