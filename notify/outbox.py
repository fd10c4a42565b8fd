"""Writing an event and its deliveries in the transaction of its cause (the notification outbox).

``emit`` is called by the receivers of the floors' signals (``notify.receivers``) and by
``notify.scans``, always inside the transaction of the change it reports: the event row
commits or rolls back with it, so no state change is notified that did not happen and
none that happened is lost. ``Event.key`` names the cause; the INSERT does nothing on a
key already there, so a cause seen twice (two claims racing, a scan repeated) yields
one event. The notifiers (``manage.py run_notifier``) send the deliveries after the commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

from aegis_site.core import wakeup
from aegis_site.core.db import transaction_memo
from notify.models import Delivery, Event, EventType, Subscription
from tasks.engine.targeting import labels_match

CHANNEL = "aegis_notify"  # the notifiers LISTEN here: new deliveries are due


def rfc3339(at: datetime) -> str:
    """A time as the catalogue writes it: RFC 3339 in UTC with ``Z`` (``2025-03-01T12:00:00.250000Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def emit(
    event_type: str,
    key: str,
    payload: dict[str, Any],
    at: datetime,
    *,
    job_id: int | None = None,
    job_kind: str | None = None,
    agent_labels: Mapping[str, Any] | None = None,
    candidates: list[Subscription] | None = None,
) -> Event | None:
    """Write the event ``key`` names and a delivery for each enabled subscription that wants it.

    Call inside the cause's transaction. Returns the new event, or ``None`` when an event of
    that key exists already or no enabled subscription wants it (nothing is written then).
    ``job_kind`` and ``agent_labels`` are what the subscriptions' filters test; a filter
    applies only when its value is given. ``candidates``: ``listening(event_type)``, when the
    caller asked already.
    """
    pool = listening(event_type) if candidates is None else candidates
    subscriptions = [subscription for subscription in pool if wants(subscription, event_type, job_kind, agent_labels)]
    if not subscriptions:
        return None  # nobody listens: no row (a site without notifications writes nothing per change)
    event = Event(type=event_type, key=key, occurred_at=at, payload=payload, job_id=job_id)
    # ON CONFLICT DO NOTHING (INSERT OR IGNORE on SQLite): on PostgreSQL a concurrent insert of the
    # same key waits for the other transaction and then does nothing if it committed.
    Event.objects.bulk_create([event], ignore_conflicts=True)
    if not Event.objects.filter(pk=event.pk).exists():
        return None
    deadline = at + timedelta(seconds=settings.NOTIFY_DEADLINE_S)
    gathering = _digest_starts(subscriptions, job_id, at) if event_type == EventType.TASK_FAILED else {}
    window = timedelta(seconds=settings.NOTIFY_DIGEST_WINDOW_S)
    Delivery.objects.bulk_create(
        [
            Delivery(
                subscription=subscription,
                event=event,
                created_at=at,
                next_attempt_at=gathering[subscription.pk] + window if subscription.pk in gathering else at,
                deadline=deadline,
            )
            for subscription in subscriptions
        ]
    )
    wakeup.notify_on_commit(CHANNEL)
    return event


def listening(event_type: str) -> list[Subscription]:
    """The enabled subscriptions that list ``event_type`` (filters not applied): one query.

    Receivers ask first and build nothing when the list is empty: a change nobody listens to
    costs this one query (a claim that starts a job, a heartbeat that brings an agent back).
    Inside the bridge's batch (``one_transaction``) asked once per batch: a storm's hundred agents coming
    online ask once.
    """
    memo = transaction_memo()
    key = ("notify.listening", event_type)
    if memo is not None and key in memo:
        return list(memo[key])
    if connection.vendor == "postgresql" and not _anyone_listens(event_type):
        found: list[Subscription] = []
    else:
        enabled = Subscription.objects.filter(enabled=True).order_by("pk")
        found = [subscription for subscription in enabled if event_type in (subscription.events or [])]
    if memo is not None:
        memo[key] = found
    return list(found)


def _anyone_listens(event_type: str) -> bool:
    """The common answer (nobody) in the cheapest query: JSON containment, no ORM (a quarter of its cost)."""
    with connection.cursor() as cursor:  # notify_subscriptions: Subscription's db_table
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM notify_subscriptions WHERE enabled AND events @> %s::jsonb)",
            [json.dumps([event_type])],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def wants(
    subscription: Subscription, event_type: str, job_kind: str | None, agent_labels: Mapping[str, Any] | None
) -> bool:
    """Whether an enabled subscription takes this event: its type listed, its filters (where they apply) met."""
    if event_type not in (subscription.events or []):
        return False
    if job_kind is not None and subscription.job_kinds and job_kind not in subscription.job_kinds:
        return False
    return (
        agent_labels is None or not subscription.agent_labels or labels_match(subscription.agent_labels, agent_labels)
    )


def _digest_starts(subscriptions: list[Subscription], job_id: int | None, at: datetime) -> dict[int, datetime]:
    """Per subscription, the first ``task.failed`` delivery of this job within the digest window before ``at``.

    A new failure of that job then waits until that delivery's time plus the window, so
    the notifier finds them together and sends one digest (see docs/notifications.md).
    """
    if job_id is None:
        return {}
    since = at - timedelta(seconds=settings.NOTIFY_DIGEST_WINDOW_S)
    starts: dict[int, datetime] = {}
    rows = (
        Delivery.objects.filter(
            subscription_id__in=[subscription.pk for subscription in subscriptions],
            event__type=EventType.TASK_FAILED,
            event__job_id=job_id,
            created_at__gt=since,
            created_at__lte=at,
        )
        .order_by("created_at")
        .values_list("subscription_id", "created_at")
    )
    for subscription_id, created_at in rows:
        starts.setdefault(subscription_id, created_at)
    return starts
