"""Waking the dispatcher: PostgreSQL LISTEN/NOTIFY, one NOTIFY per transaction that queued work."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.db import connection

CHANNEL = "aegis_queue"  # queued work for the dispatcher
OUTBOX_CHANNEL = "aegis_outbox"  # messages for the bridge to publish
log = logging.getLogger(__name__)


def notify_on_commit(channel: str = CHANNEL) -> None:
    """Wake the listeners of ``channel`` when the current transaction commits (a no-op on SQLite, which polls).

    NOTIFY is itself transactional: issued inside the transaction, PostgreSQL
    delivers it at the commit, drops it on a rollback and folds repeats into one,
    and it costs no extra round trip after the commit.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"NOTIFY {channel}")


class Listener:
    """A dedicated connection that blocks until a NOTIFY arrives or the timeout passes."""

    def __init__(self, channel: str = CHANNEL) -> None:
        self.channel = channel
        self._conn: Any = None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        if connection.vendor != "postgresql":
            return stop.wait(timeout)
        try:
            conn = self._connect()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except Exception:  # a lost connection must not stop the dispatcher: fall back to polling
            log.warning("dispatcher LISTEN connection lost; polling", exc_info=True)
            self.close()
            return stop.wait(timeout)

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            params = connection.get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            params.pop("prepare_threshold", None)
            self._conn = psycopg.connect(**params, autocommit=True)
            self._conn.execute(f"LISTEN {self.channel}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
