"""``manage.py run_notifier`` as real processes on PostgreSQL: a SIGKILL mid-POST, two replicas, SIGTERM.

The notifiers are separate processes on the test database (committed rows: ``transactional_db``)
posting to a receiver in the test process on 127.0.0.1, so they get
``NOTIFY_ALLOW_PRIVATE_ADDRESSES=1`` (loopback is refused by default) and a short poll interval.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notify.models import Delivery, DeliveryAttempt, DeliveryState
from notify.tests.receiver import Receiver, event_for, subscription
from tests.roles import ROOT, role_env
from tests.support import free_port, wait_for


@pytest.fixture
def notifiers(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts notifier processes; each is killed (if still running) before the test database is flushed."""
    started: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"notifier-{len(started) + 1}.log"
        env = role_env(
            tmp_path,
            NOTIFY_ALLOW_PRIVATE_ADDRESSES="1",
            NOTIFY_POLL_INTERVAL_S="0.1",
            NOTIFY_BACKOFF_BASE_S="0.2",
            LOG_LEVEL="INFO",
            **extra,
        )
        with log.open("wb") as sink:
            process = subprocess.Popen(  # nosec B603
                [sys.executable, "manage.py", "run_notifier"], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        started.append((log, process))
        return process

    yield start
    for log, process in started:
        if process.poll() is None:
            process.kill()
        process.wait(15)
        print(f"--- {log.name} (exit {process.returncode}) ---\n{log.read_text(errors='replace')[-10_000:]}")


def state(item: Delivery) -> str:
    item.refresh_from_db()
    return str(item.state)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_notifier_killed_mid_post_is_relieved_after_the_lease_with_the_same_id(
    receiver: Receiver, notifiers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # A lease of 2 s instead of 60: the second notifier may take the delivery back once the lease
    # of the killed one has run out, and the test need not wait a minute for it.
    receiver.hold()
    item = event_for(subscription(receiver.url()))
    first = notifiers(NOTIFY_LEASE_S="2")
    wait_for(lambda: receiver.count() == 1, "the first notifier's POST", timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(15)
    receiver.release()  # the killed notifier never reads this answer
    assert state(item) == DeliveryState.PENDING
    notifiers(NOTIFY_LEASE_S="2")
    wait_for(lambda: state(item) == DeliveryState.SUCCEEDED, "the second notifier's delivery", timeout=60)
    assert receiver.ids() == {item.pk: 2}  # the same webhook-id both times: the receiver deduplicates
    item.refresh_from_db()
    assert item.attempts == 2
    assert [attempt.status for attempt in DeliveryAttempt.objects.filter(delivery=item)] == [200]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_notifiers_post_each_delivery_once(
    receiver: Receiver, notifiers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    processes = [notifiers(NOTIFY_BATCH_SIZE="5"), notifiers(NOTIFY_BATCH_SIZE="5")]
    sub = subscription(receiver.url())
    items: list[Any] = [event_for(sub, key=f"job.finished:{number}") for number in range(60)]
    wait_for(
        lambda: Delivery.objects.filter(state=DeliveryState.SUCCEEDED).count() == len(items),
        "every delivery to succeed",
        timeout=120,
    )
    ids = receiver.ids()
    assert set(ids) == {item.pk for item in items}
    assert set(ids.values()) == {1}
    assert DeliveryAttempt.objects.count() == len(items)
    for process in processes:  # SIGTERM: finish what is in flight, exit 0
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(30) == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sigterm_lets_the_send_in_flight_finish(
    receiver: Receiver, notifiers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    receiver.hold()
    item = event_for(subscription(receiver.url()))
    process = notifiers()
    wait_for(lambda: receiver.count() == 1, "the notifier's POST", timeout=60)
    process.send_signal(signal.SIGTERM)
    receiver.release()
    assert process.wait(60) == 0
    assert state(item) == DeliveryState.SUCCEEDED  # recorded before it exited: not sent again
    assert receiver.ids() == {item.pk: 1}


def test_a_notifier_whose_steps_keep_failing_exits_non_zero(tmp_path: Path) -> None:
    """No database to claim from: after ROLE_MAX_FAILED_STEPS failed steps in a row it exits 1 for a restart."""
    env = role_env(tmp_path, ROLE_MAX_FAILED_STEPS="3", DB_POOL_TIMEOUT="1", LOG_LEVEL="INFO")
    env["DATABASE_URL"] = f"postgres://nobody@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    done = subprocess.run(  # nosec B603
        [sys.executable, "manage.py", "run_notifier"], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 1, output
    assert "notifier step failed 3 times in a row" in output
