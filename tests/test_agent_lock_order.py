"""Agent rows are locked in id order everywhere, so the bridge's heartbeat flush, the dispatcher's silence sweep and
the bridge's batches of hellos and statuses and the claims (which lock their agents ``ORDER BY id``) never deadlock
on ``agents``.

Each test sets up the interleaving that deadlocked: a claimer holds the lower agent and is about to lock the higher
one, while the flush (or the sweep) runs over both, the higher one first in its own order (the heartbeats arrived in
that order; the rows lie in that order on disk). Locking in id order, the flush waits for the lower agent holding
nothing, and the claimer goes on.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection, connections

from aegis_site.core import clock
from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer
from registry import actions as registry_actions
from registry.models import Agent, Connectivity
from tests.support import envelope, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _create_agents_higher_id_first() -> None:
    now = clock.now()
    # Inserted (so laid out on disk) higher id first, and the higher one silent longer: any scan meets it first.
    Agent.objects.create(pk="lock-b", connectivity=Connectivity.ONLINE, last_seen_at=now - timedelta(hours=2))
    Agent.objects.create(pk="lock-a", connectivity=Connectivity.ONLINE, last_seen_at=now - timedelta(hours=1))


def _claimer_connection() -> psycopg.Connection[Any]:
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    return psycopg.connect(**params, autocommit=False)


def _someone_waits_for_a_row_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


def _flush_heartbeats() -> int:
    buffer = HeartbeatBuffer()
    now = clock.now()
    buffer.add("lock-b", now)  # the higher id first, as the bridge may receive them
    buffer.add("lock-a", now)
    return buffer.flush()


def _sweep_silent_agents() -> int:
    return registry_actions.mark_silent_agents_offline(heartbeat_interval_s=10, missed=3)


def _ingest_statuses() -> int:
    """The bridge's batch after a broker restart: agents' statuses in arrival order, the higher id first."""
    batch = [
        Incoming(f"aegis/agents/{agent_id}/status", envelope("status", state="offline"))
        for agent_id in ("lock-b", "lock-a")
    ]
    return ingest(batch, HeartbeatBuffer())


@pytest.mark.parametrize(
    ("writer", "expected"),
    [(_flush_heartbeats, 2), (_sweep_silent_agents, 2), (_ingest_statuses, 2)],
    ids=["heartbeat_flush", "silence_sweep", "bridge_batch"],
)
def test_agent_writers_and_a_claimer_locking_in_id_order_do_not_deadlock(writer: Any, expected: int) -> None:
    _create_agents_higher_id_first()
    outcome: dict[str, Any] = {}

    def run_writer() -> None:
        try:
            outcome["rows"] = writer()
        except Exception as exc:  # the deadlock victim, on the old code
            outcome["error"] = exc
        finally:
            connections.close_all()

    claimer = _claimer_connection()
    thread = threading.Thread(target=run_writer)
    try:
        # The claim's lock statement takes its agents ORDER BY id: first lock-a ...
        claimer.execute("SELECT id FROM agents WHERE id = 'lock-a' FOR UPDATE")
        thread.start()
        wait_for(_someone_waits_for_a_row_lock, "the writer to wait for a row lock")
        # ... then lock-b, which the writer must not be holding while it waits for lock-a.
        claimer.execute("SET lock_timeout = '20s'")
        claimer.execute("SELECT id FROM agents WHERE id = 'lock-b' FOR UPDATE")
        claimer.commit()
    except psycopg.errors.DeadlockDetected as exc:
        outcome["claimer_error"] = exc
        claimer.rollback()
    finally:
        thread.join(timeout=30)
        claimer.close()

    assert not thread.is_alive()
    assert "claimer_error" not in outcome, outcome
    assert "error" not in outcome, outcome
    assert outcome["rows"] == expected
