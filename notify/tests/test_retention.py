"""``manage.py prune`` also removes old notification events whose deliveries ended, never a pending one."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command

from aegis_site.core import clock
from notify.models import Delivery, DeliveryAttempt, DeliveryState, Event
from notify.tests.receiver import event_for, subscription

pytestmark = pytest.mark.django_db
OLD = timedelta(days=40)


def aged(delivery: Delivery, state: str, age: timedelta = OLD) -> Delivery:
    Event.objects.filter(pk=delivery.event_id).update(occurred_at=clock.now() - age)
    Delivery.objects.filter(pk=delivery.pk).update(state=state)
    DeliveryAttempt.objects.create(delivery=delivery, at=clock.now() - age, status=200)
    return delivery


def test_old_ended_events_go_with_their_deliveries_and_log_pending_and_recent_ones_stay():
    hook = subscription("https://hooks.example.org/x")
    delivered = aged(event_for(hook), DeliveryState.SUCCEEDED)
    dead = aged(event_for(hook), DeliveryState.DEAD)
    leader = aged(event_for(hook, "task.failed", job_id=7), DeliveryState.SUCCEEDED)
    merged = aged(event_for(hook, "task.failed", job_id=7), DeliveryState.MERGED)
    Delivery.objects.filter(pk=merged.pk).update(merged_into=leader)
    pending = aged(event_for(hook), DeliveryState.PENDING)  # old, but still being sent
    recent = aged(event_for(hook), DeliveryState.SUCCEEDED, age=timedelta(days=2))

    dry = io.StringIO()
    call_command("prune", "--older-than", "30d", "--dry-run", stdout=dry)
    assert ", 4 notification events, 4 notification deliveries" in dry.getvalue()
    assert Event.objects.count() == 6

    out = io.StringIO()
    call_command("prune", "--older-than", "30d", "--batch-size", "3", stdout=out)

    assert ", 4 notification events, 4 notification deliveries" in out.getvalue()
    assert set(Delivery.objects.values_list("pk", flat=True)) == {pending.pk, recent.pk}
    assert set(Event.objects.values_list("pk", flat=True)) == {pending.event_id, recent.event_id}
    gone = [delivered.pk, dead.pk, leader.pk, merged.pk]
    assert not DeliveryAttempt.objects.filter(delivery_id__in=gone).exists()
