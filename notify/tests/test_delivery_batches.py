"""The notifier's batch paths (found by bench/notifications.py): one lease UPDATE per claim, one record per ended sends.

A claim leases its whole batch with one UPDATE; ``record_all`` writes the outcomes of the
sends that ended together in one transaction, each delivery settled as ``record`` would;
every POST uses the process's one TLS context. A real receiver on loopback, as in
test_delivery.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from aegis_site.core import clock
from notify import delivery, send
from notify.models import Delivery, DeliveryAttempt, DeliveryState
from notify.send import Outcome
from notify.tests.receiver import Receiver, event_for, failed_task, subscription

pytestmark = pytest.mark.django_db


def test_a_batch_is_leased_together_and_every_delivery_arrives_once(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, settings: Any
) -> None:
    sub = subscription(receiver.url())
    items = [event_for(sub) for _ in range(7)]
    assert delivery.Notifier(poll_interval=0.1, batch_size=5).step(pool) == 5
    assert delivery.Notifier(poll_interval=0.1, batch_size=5).step(pool) == 2
    assert sorted(receiver.ids()) == sorted(item.pk for item in items)
    assert set(receiver.ids().values()) == {1}
    for item in items:
        item.refresh_from_db()
        assert (item.state, item.attempts, item.lease_until, item.last_status) == (
            DeliveryState.SUCCEEDED,
            1,
            None,
            200,
        )
        assert DeliveryAttempt.objects.filter(delivery=item).count() == 1


def test_a_claim_leases_each_delivery_once_and_counts_the_attempt(frozen_clock: Any, settings: Any) -> None:
    sub = subscription("http://127.0.0.1:9/never")
    items = [event_for(sub) for _ in range(3)]
    claimed = delivery.claim(clock.now())
    assert sorted(item.delivery_id for item in claimed) == sorted(item.pk for item in items)
    assert {item.attempts for item in claimed} == {1}
    assert delivery.claim(clock.now()) == []
    for item in items:
        item.refresh_from_db()
        assert item.attempts == 1
        assert item.lease_until == clock.now() + timedelta(seconds=settings.NOTIFY_LEASE_S)


def test_record_all_settles_each_outcome_as_record_would(frozen_clock: Any, settings: Any) -> None:
    sub = subscription("http://127.0.0.1:9/never")
    ok, later, refused, gone = (event_for(sub) for _ in range(4))
    claimed = {item.delivery_id: item for item in delivery.claim(clock.now())}
    Delivery.objects.filter(pk=gone.pk).delete()
    states = delivery.record_all(
        [
            (claimed[ok.pk], Outcome("delivered", status=200)),
            (claimed[later.pk], Outcome("retry", status=503, error="HTTP 503")),
            (claimed[refused.pk], Outcome("refuse", status=410, error="HTTP 410")),
            (claimed[gone.pk], Outcome("delivered", status=200)),
        ],
        clock.now(),
    )
    assert states == [DeliveryState.SUCCEEDED, DeliveryState.PENDING, DeliveryState.DEAD, "gone"]
    for item in (ok, later, refused):
        item.refresh_from_db()
        assert item.lease_until is None
        assert [attempt.status for attempt in DeliveryAttempt.objects.filter(delivery=item)] == [item.last_status]
    assert later.next_attempt_at > clock.now()


def test_a_digest_still_gathers_in_a_batch_of_other_events(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor
) -> None:
    sub = subscription(receiver.url())
    event_for(sub)
    leader = event_for(sub, "task.failed", failed_task(1), job_id=7)
    event_for(sub, "task.failed", failed_task(2), job_id=7)
    event_for(sub)
    assert delivery.Notifier(poll_interval=0.1).step(pool) == 3
    assert receiver.count() == 3
    leader.refresh_from_db()
    assert leader.state == DeliveryState.SUCCEEDED
    assert Delivery.objects.filter(merged_into=leader, state=DeliveryState.MERGED).count() == 1


def test_every_post_uses_one_tls_context(receiver: Receiver, loopback_allowed: None) -> None:
    assert send.tls_context() is send.tls_context()
    before = send.tls_context.cache_info().misses
    for _ in range(2):
        assert send.post(receiver.url(), b"{}", {}).verdict == "delivered"
    assert send.tls_context.cache_info().misses == before
