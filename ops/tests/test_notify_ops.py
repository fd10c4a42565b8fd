"""Notification operations: the backlog gauges on /metrics and the notifications health check."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from aegis_site.core import clock, roles
from aegis_site.core.audit import Actor
from aegis_site.core.models import RoleHeartbeat
from notify import actions
from notify.models import Delivery, DeliveryState, Event, Subscription
from ops.health.checks import Notifications
from ops.tests.test_metrics_logs import sample

pytestmark = pytest.mark.django_db

HOOK = {"name": "ops hook", "url": "https://hooks.example.com/aegis", "events": ["job.finished"]}


def make_delivery(subscription: Subscription, key: str, due_ago_s: float = 0, **fields: Any) -> Delivery:
    now = clock.now()
    event = Event.objects.create(type="job.finished", key=key, occurred_at=now, payload={})
    due = now - timedelta(seconds=due_ago_s)
    fields = {"created_at": due, "next_attempt_at": due, "deadline": now + timedelta(hours=1), **fields}
    return Delivery.objects.create(subscription=subscription, event=event, **fields)


def beat(age_s: float = 0) -> None:
    roles.record_role_heartbeat("notifier", "host:notifier", clock.now())
    RoleHeartbeat.objects.filter(role="notifier").update(beat_at=clock.now() - timedelta(seconds=age_s))


def test_backlog_gauges(frozen_clock):
    text = Client().get("/metrics").content.decode()
    assert sample(text, "aegis_notify_pending") == 0
    assert sample(text, "aegis_notify_oldest_due_age_seconds") == 0
    assert sample(text, "aegis_notify_dead") == 0
    hook = actions.create_subscription(Actor("tester"), **HOOK)
    make_delivery(hook, "a", due_ago_s=90)
    make_delivery(hook, "b", due_ago_s=30)
    make_delivery(hook, "c", due_ago_s=-600)  # waiting for its retry: pending, not due
    make_delivery(hook, "d", due_ago_s=900, state=DeliveryState.DEAD)
    make_delivery(hook, "e", due_ago_s=900, state=DeliveryState.SUCCEEDED)
    text = Client().get("/metrics").content.decode()
    assert sample(text, "aegis_notify_pending") == 3
    assert sample(text, "aegis_notify_oldest_due_age_seconds") == 90
    assert sample(text, "aegis_notify_dead") == 1


@pytest.mark.django_db(transaction=True)  # the check closes its connection, as on the view's executor threads
def test_health_needs_a_notifier_only_with_subscriptions(frozen_clock, settings):
    settings.ROLE_STALE_AFTER = 60
    Notifications().run()  # nothing subscribed: healthy without a notifier
    hook = actions.create_subscription(Actor("tester"), **HOOK)
    with pytest.raises(ServiceUnavailable, match="no notifier has ever reported"):
        Notifications().run()
    beat(age_s=300)
    with pytest.raises(ServiceUnavailable, match="notifier last reported 300s ago"):
        Notifications().run()
    beat()
    Notifications().run()
    make_delivery(hook, "a", due_ago_s=700)
    with pytest.raises(ServiceWarning, match="waited 700s"):
        Notifications().run()
    Notifications(backlog_warn_s=1000).run()
    actions.set_enabled(hook.pk, False, Actor("tester"))
    Notifications().run()  # only disabled subscriptions: nothing is checked
