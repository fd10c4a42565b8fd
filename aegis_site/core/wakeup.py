"""Waking the dispatcher: PostgreSQL LISTEN/NOTIFY, one NOTIFY per transaction that queued work."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

from django.db import connection

CHANNEL = "aegis_queue"  # queued work for the dispatcher
OUTBOX_CHANNEL = "aegis_outbox"  # messages for the bridge to publish
log = logging.getLogger(__name__)


HINT_MAX_AGENTS = 50  # a NOTIFY payload holds at most 8,000 bytes; past this the dispatcher looks itself


def notify_on_commit(channel: str = CHANNEL, agents: Collection[str] = ()) -> None:
    """Wake the listeners of ``channel`` when the current transaction commits (a no-op on SQLite, which polls).

    NOTIFY is itself transactional: issued inside the transaction, PostgreSQL
    delivers it at the commit, drops it on a rollback and folds repeats into one,
    and it costs no extra round trip after the commit. ``agents``, a hint for the
    dispatcher: the agents that have new work or new room, claimed for at once,
    before it looks for others.
    """
    if connection.vendor != "postgresql":
        return
    payload = ",".join(sorted(agents)) if len(agents) <= HINT_MAX_AGENTS else ""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


class Listener:
    """A dedicated connection that blocks until a NOTIFY arrives or the timeout passes."""

    def __init__(self, channel: str = CHANNEL) -> None:
        self.channel = channel
        self._conn: Any = None

    def wait(self, timeout: float, stop: threading.Event) -> set[str] | None:
        """Block until a NOTIFY or the timeout; returns the agent ids hinted (``None``: nothing arrived)."""
        if connection.vendor != "postgresql":
            return set() if stop.wait(timeout) else None
        try:
            conn = self._connect()
            payloads = [notify.payload for notify in conn.notifies(timeout=timeout, stop_after=1)]
        except Exception:  # a lost connection must not stop the dispatcher: fall back to polling
            log.warning("dispatcher LISTEN connection lost; polling", exc_info=True)
            self.close()
            return set() if stop.wait(timeout) else None
        if not payloads:
            return None
        return {agent_id for payload in payloads for agent_id in payload.split(",") if agent_id}

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = listen_connection(self.channel)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def listen_connection(channel: str) -> Any:
    """A psycopg connection of its own (never one of the pool's), autocommit, listening on ``channel``."""
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    conn = psycopg.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {channel}")
    return conn
