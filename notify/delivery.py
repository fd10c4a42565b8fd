"""The delivery loop's three steps: claim due deliveries, send them, record each outcome.

``claim`` is one short transaction: due pending deliveries ``FOR NO KEY UPDATE SKIP LOCKED``
(any number of notifiers share the queue, none waits for another), a lease and one more
attempt on each, and, for a task.failed delivery, the other pending ones of the same
subscription and job marked ``merged`` into it (one digest). The send happens after the
commit, outside any transaction. A notifier that dies mid-send leaves its lease to expire;
another then sends the delivery again with the same ``webhook-id``. ``record`` is the second
transaction: the attempt in the delivery log, then succeeded, retried with backoff (or the
receiver's ``Retry-After`` when later), or dead (refused, or past the deadline).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q, QuerySet

from aegis_site.core import clock
from aegis_site.core.roles import FailedSteps, RoleBeacon
from aegis_site.core.wakeup import Listener
from notify import metrics, render
from notify.models import Delivery, DeliveryAttempt, DeliveryState, EventType
from notify.send import Outcome, Target, send

log = logging.getLogger("aegis.notify")
CHANNEL = "aegis_notify"  # notify.outbox NOTIFYs it at the commit of an event's cause


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this notifier, with all it needs to be sent without the database."""

    delivery_id: str
    attempts: int  # after the claim: this attempt's number (a later claim by another notifier makes it stale)
    target: Target
    message: render.Message


def _lockable(now: datetime) -> QuerySet[Delivery]:
    unleased = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return (
        Delivery.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
        .filter(state=DeliveryState.PENDING)
        .filter(unleased)
    )


def claim(now: datetime, limit: int | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (``NOTIFY_BATCH_SIZE``) to this notifier, digests merged."""
    limit = limit or settings.NOTIFY_BATCH_SIZE
    lease_until = now + timedelta(seconds=settings.NOTIFY_LEASE_S)
    claimed: list[Claimed] = []
    with transaction.atomic():
        due = list(
            _lockable(now)
            .filter(next_attempt_at__lte=now)
            .select_related("event", "subscription")
            .order_by("next_attempt_at", "id")[:limit]
        )
        taken: set[str] = set()
        leaders: list[Delivery] = []
        for delivery in due:
            if delivery.pk in taken:  # merged into an earlier one of this batch
                continue
            taken.add(delivery.pk)
            if _digests(delivery):
                _merge(delivery, now, taken)
            leaders.append(delivery)
        # One UPDATE for the batch (a save per delivery was a round trip each).
        Delivery.objects.filter(pk__in=[delivery.pk for delivery in leaders]).update(
            lease_until=lease_until, attempts=F("attempts") + 1
        )
        for delivery in leaders:
            delivery.lease_until = lease_until
            delivery.attempts += 1
            merged = (
                [
                    other.event
                    for other in Delivery.objects.filter(merged_into=delivery, state=DeliveryState.MERGED)
                    .select_related("event")
                    .order_by("event__occurred_at", "event_id")
                ]
                if _digests(delivery)
                else []
            )
            subscription = delivery.subscription
            target = Target(
                subscription.target_kind, subscription.url, tuple(subscription.emails or ()), subscription.secret
            )
            claimed.append(Claimed(delivery.pk, delivery.attempts, target, render.message(delivery.event, merged)))
    return claimed


def _digests(delivery: Delivery) -> bool:
    """Whether ``delivery`` gathers others into a digest: a job's task.failed (no other type is ever merged)."""
    return delivery.event.type == EventType.TASK_FAILED and delivery.event.job_id is not None


def _merge(leader: Delivery, now: datetime, taken: set[str]) -> None:
    """Mark the other pending task.failed deliveries of the leader's subscription and job merged into it."""
    others = list(
        _lockable(now)
        .filter(
            subscription_id=leader.subscription_id,
            event__type=EventType.TASK_FAILED,
            event__job_id=leader.event.job_id,
        )
        .exclude(pk=leader.pk)
        .order_by("id")
    )
    if not others:
        return
    ids = [other.pk for other in others]
    taken.update(ids)
    Delivery.objects.filter(pk__in=ids).update(state=DeliveryState.MERGED, merged_into=leader, lease_until=None)


def backoff(attempts: int) -> float:
    """Seconds before the next try: ``min(cap, base * 2**(attempts-1))``, less up to 20 % (jitter spreads a herd)."""
    delay = min(settings.NOTIFY_BACKOFF_CAP_S, settings.NOTIFY_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0))
    return delay * (1 - 0.2 * random.random())  # noqa: S311 (jitter, not security)  # nosec B311


def record(item: Claimed, outcome: Outcome, now: datetime) -> str:
    """Write the attempt and the delivery's new state; returns that state."""
    return record_all([(item, outcome)], now)[0]


def record_all(results: list[tuple[Claimed, Outcome]], now: datetime) -> list[str]:
    """``record`` for the sends that ended together, in one transaction; the states in their order.

    One commit for several outcomes: the notifier's main thread spent most of its time in a
    commit per delivery (bench/notifications.py's profile) while the senders waited to be recorded.
    """
    states: list[str] = []
    with transaction.atomic():
        ids = sorted({item.delivery_id for item, _outcome in results})  # one lock order for every notifier
        rows = {
            row.pk: row for row in Delivery.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
        }
        tries = []
        for item, outcome in results:
            delivery = rows.get(item.delivery_id)
            if delivery is None:  # its subscription was deleted meanwhile
                states.append("gone")
                continue
            tries.append(
                DeliveryAttempt(
                    delivery=delivery,
                    at=now,
                    status=outcome.status,
                    error=outcome.error[:500],
                    duration_ms=outcome.duration_ms,
                )
            )
            states.append(_settle(delivery, item, outcome, now))
        DeliveryAttempt.objects.bulk_create(tries)
    for (item, outcome), state in zip(results, states, strict=True):
        if state not in ("gone", "stale"):
            _count(item, outcome, state, now)
    return states


def _settle(delivery: Delivery, item: Claimed, outcome: Outcome, now: datetime) -> str:
    """Save the delivery's state after this attempt (locked by the caller); returns it, or ``stale``."""
    delivery.last_status = outcome.status
    delivery.last_error = outcome.error[:500]
    fields = ["last_status", "last_error"]
    stale = delivery.attempts != item.attempts or delivery.state != DeliveryState.PENDING
    if outcome.verdict == "delivered":
        delivery.state = DeliveryState.SUCCEEDED
        delivery.delivered_at = now
        delivery.lease_until = None
        delivery.last_error = ""
        fields += ["state", "delivered_at", "lease_until"]
    elif stale:
        # Another notifier took it after our lease ran out, or an operator redelivered it: theirs to decide.
        delivery.save(update_fields=fields)
        return "stale"
    else:
        fields += _after_failure(delivery, outcome, now)
    delivery.save(update_fields=fields)
    return str(delivery.state)


def _after_failure(delivery: Delivery, outcome: Outcome, now: datetime) -> list[str]:
    delivery.lease_until = None
    if outcome.verdict == "retry":
        delay = backoff(delivery.attempts)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        next_at = now + timedelta(seconds=delay)
        if next_at <= delivery.deadline:
            delivery.next_attempt_at = next_at
            return ["lease_until", "next_attempt_at"]
        delivery.last_error = f"past the deadline; last: {outcome.error}"[:500]
    delivery.state = DeliveryState.DEAD
    return ["lease_until", "state", "last_error"]


def _count(item: Claimed, outcome: Outcome, state: str, now: datetime) -> None:
    if outcome.verdict == "delivered":
        metrics.SENT.labels(target=item.target.kind).inc()
        for occurred in item.message.occurred:
            metrics.DELIVERY_SECONDS.observe(max((now - occurred).total_seconds(), 0.0))
        log.info("notification delivered", extra={"delivery": item.delivery_id, "attempt": item.attempts})
        return
    metrics.FAILED.labels(reason=outcome.reason or "other").inc()
    if state == DeliveryState.DEAD:
        metrics.DEAD_LETTERED.inc()
        log.warning(
            "notification dead-lettered",
            extra={"delivery": item.delivery_id, "attempt": item.attempts, "error": outcome.error},
        )
    else:
        metrics.RETRIED.inc()
        log.info(
            "notification to be retried",
            extra={"delivery": item.delivery_id, "attempt": item.attempts, "error": outcome.error},
        )


def deliver(item: Claimed) -> Outcome:
    """Send one claimed delivery (no database: called from the notifier's thread pool)."""
    try:
        return send(item.target, item.delivery_id, item.message)
    except Exception as error:  # a bug in rendering must not leave the lease hanging: retry, logged
        log.exception("sending a notification failed", extra={"delivery": item.delivery_id})
        return Outcome("retry", error=f"{type(error).__name__}: {error}"[:500], reason="internal")


class Notifier:
    """The ``run_notifier`` role: claim, send (a few at once), record, until ``stop`` is set.

    It wakes on ``NOTIFY aegis_notify`` (sent at the commit of an event's cause) or every
    ``NOTIFY_POLL_INTERVAL_S`` (retries come due without a NOTIFY), and runs the scans
    (expiring certificates, stuck reconciliation) every ``SCAN_INTERVAL_S``. Sends of one batch
    run in a small thread pool, so one slow receiver does not hold the others; only the main
    thread touches the database. On SIGTERM it finishes the sends in flight and records them.
    """

    SCAN_INTERVAL_S = 60.0
    SENDERS = 4

    def __init__(self, poll_interval: float | None = None, batch_size: int | None = None) -> None:
        self.poll_interval = poll_interval or settings.NOTIFY_POLL_INTERVAL_S
        self.batch_size = batch_size or settings.NOTIFY_BATCH_SIZE
        self.stop = threading.Event()
        self._next_scan = 0.0

    def step(self, pool: ThreadPoolExecutor) -> int:
        """One batch: claim, send concurrently, record as sends end; returns how many were claimed."""
        batch = claim(clock.now(), self.batch_size)
        sending = {pool.submit(deliver, item): item for item in batch}
        while sending:
            # Record what has ended, together: one slow receiver does not hold the others' records.
            ended, _ = wait(sending, return_when=FIRST_COMPLETED)
            record_all([(sending.pop(future), future.result()) for future in ended], clock.now())
        return len(batch)

    def scan(self) -> None:
        """The periodic scans (notify/scans.py), once a ``SCAN_INTERVAL_S``."""
        if time.monotonic() < self._next_scan:
            return
        self._next_scan = time.monotonic() + self.SCAN_INTERVAL_S
        from notify import scans

        found = scans.scan(clock.now())
        if found:
            log.info("scans emitted events", extra={"count": found})

    def run(self) -> None:
        log.info("notifier started", extra={"batch_size": self.batch_size, "poll_interval": self.poll_interval})
        listener = Listener(CHANNEL)
        beacon = RoleBeacon("notifier")
        failures = FailedSteps("notifier step", "aegis.notify")
        with ThreadPoolExecutor(self.SENDERS, thread_name_prefix="notify-send") as pool:
            try:
                while not self.stop.is_set():
                    close_old_connections()
                    try:
                        self.scan()
                        claimed = self.step(pool)
                    except Exception:
                        close_old_connections()
                        # No heartbeat while failing; past ROLE_MAX_FAILED_STEPS the process exits for its
                        # supervisor to restart it.
                        delay = failures.failed()
                        failures.check()
                        self.stop.wait(delay)
                        continue
                    failures.succeeded()
                    beacon.maybe_beat(batch_size=self.batch_size)
                    if claimed < self.batch_size:
                        listener.wait(self.poll_interval, self.stop)
            finally:
                listener.close()
                log.info("notifier stopped")
