"""Pruning notifications with ``manage.py prune`` (``tasks.signals.pruning``): old events whose deliveries ended.

An event older than the cutoff goes, with its deliveries and their attempt log, once none of its
deliveries is pending (succeeded, dead-lettered or merged into a digest). A pending one, however
old, is kept: it is still being sent (or waits for its redelivery). Each batch is its own transaction.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet

from notify.models import Delivery, DeliveryAttempt, DeliveryState, Event


def prunable_events(cutoff: datetime) -> QuerySet[Event]:
    pending = Delivery.objects.filter(event=OuterRef("pk"), state=DeliveryState.PENDING)
    return Event.objects.filter(occurred_at__lt=cutoff).filter(~Exists(pending))


def prune(cutoff: datetime, batch_size: int, dry_run: bool) -> dict[str, int]:
    """Delete (or count) the prunable events and their deliveries; returns the counts by what."""
    if dry_run:
        events = prunable_events(cutoff)
        return {
            "notification events": events.count(),
            "notification deliveries": Delivery.objects.filter(event__in=events).count(),
        }
    counts = {"notification events": 0, "notification deliveries": 0}
    while ids := list(prunable_events(cutoff).order_by("pk").values_list("pk", flat=True)[:batch_size]):
        with transaction.atomic():
            deliveries = Delivery.objects.filter(event_id__in=ids)
            DeliveryAttempt.objects.filter(delivery__in=deliveries).delete()
            # A digest's members point at their leader (merged_into): clear it, then delete them all at once.
            deliveries.update(merged_into=None)
            deleted_deliveries, _ = Delivery.objects.filter(event_id__in=ids).delete()
            deleted_events, _ = Event.objects.filter(pk__in=ids).delete()
        counts["notification deliveries"] += deleted_deliveries
        counts["notification events"] += deleted_events
    return counts
