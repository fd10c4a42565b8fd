"""Delivery against a real HTTP receiver on loopback: signatures, retries, Retry-After, dead letters, SSRF, digests.

The receiver listens on 127.0.0.1, which the SSRF check refuses by default: these tests set
``NOTIFY_ALLOW_PRIVATE_ADDRESSES`` so that deliveries reach it (except the test of the refusal).
Each step runs the notifier's own ``step`` (claim, send in its thread pool, record); the engine
clock is frozen and moved by hand to bring retries due, never slept for.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from aegis_site.core import clock
from notify import addresses, delivery, render, signing
from notify.models import Delivery, DeliveryAttempt, DeliveryState
from notify.send import retry_after_seconds
from notify.tests.receiver import Receiver, event_for, failed_task, subscription

pytestmark = pytest.mark.django_db


def run(pool: ThreadPoolExecutor) -> int:
    return delivery.Notifier(poll_interval=0.1).step(pool)


def statuses(item: Delivery) -> list[int | None]:
    return [attempt.status for attempt in DeliveryAttempt.objects.filter(delivery=item).order_by("at", "id")]


def test_signature_verifies_with_the_reference_verifier(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor
) -> None:
    sub = subscription(receiver.url())
    item = event_for(sub)
    assert run(pool) == 1
    (request,) = receiver.requests
    assert request.headers["webhook-id"] == item.pk
    assert request.headers["content-type"] == "application/json"
    verified = Webhook(sub.secret).verify(request.body, request.headers)
    assert verified == {
        "id": item.event_id,
        "type": "job.finished",
        "version": 1,
        "timestamp": render.rfc3339(item.event.occurred_at),
        "data": {"job": {"id": 42, "kind": "echo"}, "outcome": "succeeded"},
    }
    assert verified["timestamp"].endswith("Z")
    tampered = dict(request.headers, **{"webhook-signature": signing.signature(signing.PREFIX + "AAAA", "x", 1, b"")})
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(sub.secret).verify(request.body, tampered)
    item.refresh_from_db()
    assert (item.state, item.attempts, item.last_status, item.lease_until) == (DeliveryState.SUCCEEDED, 1, 200, None)


def test_502_twice_then_200_delivers_on_the_third_try_with_the_same_id(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, frozen_clock: Any
) -> None:
    receiver.answers = [(502, {}), (502, {})]
    item = event_for(subscription(receiver.url()))
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.state == DeliveryState.PENDING
    assert item.next_attempt_at > clock.now()  # backed off
    assert run(pool) == 0  # not due yet
    frozen_clock.advance(60)  # past the backoff (5 s, then 10 s), before the deadline (1 h)
    assert run(pool) == 1
    frozen_clock.advance(60)
    assert run(pool) == 1
    assert receiver.ids() == {item.pk: 3}
    item.refresh_from_db()
    assert (item.state, item.attempts) == (DeliveryState.SUCCEEDED, 3)
    assert statuses(item) == [502, 502, 200]


def test_backoff_doubles_up_to_the_cap(settings: Any) -> None:
    settings.NOTIFY_BACKOFF_BASE_S = 5.0
    settings.NOTIFY_BACKOFF_CAP_S = 30.0
    for attempts, full in [(1, 5.0), (2, 10.0), (3, 20.0), (4, 30.0), (10, 30.0)]:
        assert 0.8 * full <= delivery.backoff(attempts) <= full


def test_429_retry_after_is_honoured(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, frozen_clock: Any
) -> None:
    receiver.answers = [(429, {"Retry-After": "120"})]
    item = event_for(subscription(receiver.url()))
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.next_attempt_at >= clock.now() + timedelta(seconds=120)
    frozen_clock.advance(100)  # past the backoff (5 s), before Retry-After
    assert run(pool) == 0
    frozen_clock.advance(21)
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.state == DeliveryState.SUCCEEDED
    assert statuses(item) == [429, 200]


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("Thu, 01 Jan 2026 12:02:00 GMT", now) == 120.0
    assert retry_after_seconds("30", now) == 30.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_a_400_is_dead_at_once(receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor) -> None:
    receiver.answers = [(400, {})]
    item = event_for(subscription(receiver.url()))
    assert run(pool) == 1
    item.refresh_from_db()
    assert (item.state, item.last_status) == (DeliveryState.DEAD, 400)
    assert run(pool) == 0
    assert receiver.count() == 1


def test_past_the_deadline_it_is_dead(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, frozen_clock: Any
) -> None:
    receiver.answers = [(503, {}), (503, {})]
    item = event_for(subscription(receiver.url()), deadline_s=30)
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.state == DeliveryState.PENDING  # next try (~5 s) before the deadline
    frozen_clock.advance(29)
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.state == DeliveryState.DEAD
    assert "deadline" in item.last_error
    assert statuses(item) == [503, 503]


def test_a_url_resolving_to_loopback_is_refused_by_default(
    receiver: Receiver, pool: ThreadPoolExecutor, settings: Any
) -> None:
    settings.NOTIFY_ALLOW_PRIVATE_ADDRESSES = False  # the default, said again
    item = event_for(subscription(receiver.url(host="localhost")))
    assert run(pool) == 1
    item.refresh_from_db()
    assert item.state == DeliveryState.DEAD
    assert "non-public" in item.last_error
    assert receiver.count() == 0


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # nosec B104
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert addresses.is_public(address) is public


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "gopher://1.2.3.4/"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(addresses.BlockedAddress):
        addresses.pin(url)


def test_the_request_goes_to_the_checked_address_with_the_host_header(settings: Any) -> None:
    settings.NOTIFY_ALLOW_PRIVATE_ADDRESSES = True
    pinned = addresses.pin("https://localhost:8443/hook?x=1")
    assert pinned.url.host in {"127.0.0.1", "::1"}
    assert (pinned.url.port, pinned.url.path, pinned.url.query) == (8443, "/hook", b"x=1")
    assert pinned.headers == {"Host": "localhost:8443"}
    assert pinned.extensions == {"sni_hostname": "localhost"}
    assert addresses.pin("http://localhost/").headers == {"Host": "localhost"}


def test_a_redirect_is_not_followed(receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor) -> None:
    receiver.answers = [(302, {"Location": "http://169.254.169.254/latest/meta-data/"})]
    item = event_for(subscription(receiver.url()))
    run(pool)
    item.refresh_from_db()
    assert (item.state, item.last_status) == (DeliveryState.DEAD, 302)
    assert receiver.count() == 1


def test_connection_refused_is_retried(loopback_allowed: None, pool: ThreadPoolExecutor) -> None:
    closed = Receiver().start()
    url = closed.url()
    closed.stop()
    item = event_for(subscription(url))
    run(pool)
    item.refresh_from_db()
    assert item.state == DeliveryState.PENDING
    assert statuses(item) == [None]
    assert item.last_error


def test_slack_body(receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor) -> None:
    item = event_for(subscription(receiver.url("/slack"), target_kind="slack"))
    run(pool)
    (request,) = receiver.requests
    assert request.path == "/slack"
    assert json.loads(request.body) == {"text": "[aegis] job 42 (echo) finished: succeeded"}
    assert request.headers["webhook-id"] == item.pk
    item.refresh_from_db()
    assert item.state == DeliveryState.SUCCEEDED


def test_task_failed_deliveries_of_one_job_go_out_as_one_digest(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, frozen_clock: Any
) -> None:
    sub = subscription(receiver.url())
    items = []
    for task_id in (11, 12, 13):
        items.append(event_for(sub, "task.failed", failed_task(task_id), job_id=7))
        frozen_clock.advance(1)
    other_job = event_for(sub, "task.failed", failed_task(99, job_id=8), job_id=8)
    assert run(pool) == 2  # one digest for job 7, one for job 8
    bodies = {json.loads(request.body)["data"]["job"]["id"]: request for request in receiver.requests}
    digest = bodies[7]
    data = Webhook(sub.secret).verify(digest.body, digest.headers)
    assert data["type"] == "task.failed"
    assert data["id"] == items[0].event_id
    assert digest.headers["webhook-id"] == items[0].pk
    assert data["data"]["count"] == 3
    assert [task["id"] for task in data["data"]["tasks"]] == [11, 12, 13]
    assert json.loads(bodies[8].body)["data"]["count"] == 1
    states = {item.pk: (item.state, item.merged_into_id) for item in Delivery.objects.all()}
    assert states[items[0].pk] == (DeliveryState.SUCCEEDED, None)
    assert states[items[1].pk] == (DeliveryState.MERGED, items[0].pk)
    assert states[items[2].pk] == (DeliveryState.MERGED, items[0].pk)
    assert states[other_job.pk] == (DeliveryState.SUCCEEDED, None)


def test_a_digest_gathers_deliveries_not_yet_due(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor
) -> None:
    """A delivery gathering for the digest window (next_attempt_at later) rides with a due one of its job."""
    sub = subscription(receiver.url())
    first = event_for(sub, "task.failed", failed_task(1), job_id=7)
    later = event_for(sub, "task.failed", failed_task(2), job_id=7)
    Delivery.objects.filter(pk=later.pk).update(next_attempt_at=clock.now() + timedelta(seconds=60))
    assert run(pool) == 1
    (request,) = receiver.requests
    assert [task["id"] for task in json.loads(request.body)["data"]["tasks"]] == [1, 2]
    later.refresh_from_db()
    assert (later.state, later.merged_into_id) == (DeliveryState.MERGED, first.pk)


def test_a_receiver_that_does_not_answer_in_time_is_retried(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, settings: Any
) -> None:
    """The held request times out (NOTIFY_DELIVERY_TIMEOUT_S) and is retried; the other of the batch is delivered."""
    settings.NOTIFY_DELIVERY_TIMEOUT_S = 2.0
    slow = Receiver().start()
    slow.hold()
    try:
        held = event_for(subscription(slow.url()))
        quick = event_for(subscription(receiver.url()))
        assert run(pool) == 2
    finally:
        slow.stop()
    held.refresh_from_db()
    quick.refresh_from_db()
    assert quick.state == DeliveryState.SUCCEEDED
    assert held.state == DeliveryState.PENDING
    assert "Timeout" in held.last_error


def test_a_late_answer_after_the_lease_ran_out_leaves_the_delivery_to_its_new_holder(
    loopback_allowed: None, frozen_clock: Any, settings: Any
) -> None:
    """A notifier whose lease expired mid-send records its attempt but does not reschedule another's claim."""
    from notify.send import Outcome

    item = event_for(subscription("http://127.0.0.1:9/never"))
    (first,) = delivery.claim(clock.now())
    assert delivery.claim(clock.now()) == []  # leased
    frozen_clock.advance(settings.NOTIFY_LEASE_S + 1)
    (second,) = delivery.claim(clock.now())
    assert (first.delivery_id, first.attempts, second.attempts) == (item.pk, 1, 2)
    assert delivery.record(first, Outcome("retry", status=503, error="HTTP 503"), clock.now()) == "stale"
    item.refresh_from_db()
    assert item.lease_until is not None  # still the second notifier's
    assert delivery.record(second, Outcome("delivered", status=200), clock.now()) == DeliveryState.SUCCEEDED
    assert statuses(item) == [503, 200]


@pytest.mark.parametrize(
    ("event_type", "data", "line"),
    [
        (
            "job.finished",
            {"job": {"id": 3, "kind": "deploy", "state": "failed"}, "outcome": "aborted"},
            "job 3 (deploy) finished: aborted",
        ),
        ("agent.offline", {"agent": {"id": "a-1", "name": "web-1"}}, "agent web-1 is offline"),
        (
            "certificate.expiring",
            {
                "certificate": {
                    "role": "agent",
                    "common_name": "a-1",
                    "serial": "0a",
                    "not_after": "2026-01-06T00:00:00Z",
                    "days_left": 5,
                }
            },
            "certificate of agent a-1 (serial 0a) expires 2026-01-06T00:00:00Z, in 5 days",
        ),
        (
            "reconciliation.stuck",
            {
                "title": "lease expired",
                "since": "2026-01-01T11:00:00Z",
                "task": {"id": 9},
                "job": {"id": 3, "kind": "deploy"},
            },
            "task 9 of job 3 (deploy) stuck since 2026-01-01T11:00:00Z: lease expired",
        ),
    ],
)
def test_one_readable_line_per_event(event_type: str, data: dict[str, Any], line: str) -> None:
    msg = render.Message("evt_1", event_type, datetime(2026, 1, 1, tzinfo=UTC), data)
    assert render.lines(msg) == [line]
    assert json.loads(render.slack_body(msg)) == {"text": f"[aegis] {line}"}
    subject, body = render.email(msg)
    assert subject == f"[aegis] {event_type}: {line}"
    assert body.startswith(line)


def test_events_written_by_the_outbox_reach_the_receiver(
    receiver: Receiver, loopback_allowed: None, pool: ThreadPoolExecutor, frozen_clock: Any, settings: Any
) -> None:
    """notify.outbox.emit's rows, as the state changes write them: two failures of one job gather into one digest."""
    from notify.outbox import emit

    sub = subscription(receiver.url())
    emit("task.failed", "task.failed:1:1", failed_task(1), clock.now(), job_id=7, job_kind="echo")
    frozen_clock.advance(1)
    emit("task.failed", "task.failed:2:1", failed_task(2), clock.now(), job_id=7, job_kind="echo")
    assert run(pool) == 1  # the first is due at once and takes the gathering second with it
    (request,) = receiver.requests
    body = Webhook(sub.secret).verify(request.body, request.headers)
    assert [task["id"] for task in body["data"]["tasks"]] == [1, 2]
    assert Delivery.objects.filter(state=DeliveryState.MERGED).count() == 1
