"""Long-poll claims wait here, holding no database connection while they wait.

One daemon thread per process holds one LISTEN connection (its own, never one of
the pool's) on the queue's wakeup channel; each NOTIFY wakes the waiting claims
it may concern (all of them, or the agents its payload names), and each then
claims again with a pooled connection held for that one transaction. A waiter is
an ``asyncio.Event`` on its request's event loop: no thread blocks on it.

Work that becomes claimable without a commit (a backoff's ``not_before`` passing,
a rate token) is announced by the dispatcher (``tasks.dispatcher.Dispatcher.announce_due``).
The LISTEN connection can be lost (or the database is SQLite, which has none): a
wait then ends after ``poll_s``, and the caller claims again; while listening, after
``recheck_s`` at the latest.

Waits are counted per agent: ``reserve`` refuses more than ``per_agent`` at once
in this process, so one agent's clients cannot pile up waiters.

A waiter holds no thread either: Django runs a request's sync code (the claim, its
token check, the ``request_started`` receivers) in a thread of the request's own that
lives until the request ends; ``let_request_thread_go`` ends it before a wait, and the
claim after the wait starts another (``tasks.api.agent_views.claim``).

The same machinery, on its own channel and keyed by task id, wakes the readers following
a task's output (``tasks.engine.output_waits``): a ``Waits`` is keyed by whatever names
its waiters in the NOTIFY payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from dataclasses import dataclass

from asgiref.sync import AsyncToSync, SyncToAsync
from django.db import connection

from aegis_site.core import wakeup

log = logging.getLogger(__name__)

# Listening: a NOTIFY wakes waits at once, also for work that came due without a commit (the dispatcher's
# ``announce_due``); this only bounds a wait whose NOTIFY was lost. It was 5 s: 200 empty claims a second
# with 1,000 agents waiting (docs/benchmarks.md, "HTTP agents at scale").
RECHECK_S = 30.0
POLL_S = 1.0  # not listening (SQLite, or the LISTEN connection is being re-established)
_RECONNECT_S = 2.0
_STOP_CHECK_S = 1.0  # how often the LISTEN thread looks whether it should stop


@dataclass(eq=False)
class _Waiter:
    key: str  # what the NOTIFY payloads name: an agent id (claims), a task id (output)
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event


class Waits:
    """The process's waiting claims, one LISTEN connection for all of them, and a cap per agent."""

    def __init__(
        self, channel: str = wakeup.CHANNEL, recheck_s: float = RECHECK_S, poll_s: float = POLL_S, name: str = "claim"
    ) -> None:
        self.channel = channel
        self.recheck_s = recheck_s  # listening: the longest wait before the caller looks again anyway
        self.poll_s = poll_s  # not listening: the caller polls at this interval
        self.name = name  # of the LISTEN thread and in its log lines
        self._lock = threading.Lock()
        self._waiters: set[_Waiter] = set()
        self._per_agent: Counter[str] = Counter()
        self._generation = 0  # bumped on every NOTIFY: a claim that raced one looks again at once
        self._listening = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- the cap per agent ------------------------------------------------------------------------------------

    def reserve(self, agent_id: str, per_agent: int) -> bool:
        """Count one more wait of ``agent_id``; ``False`` (nothing counted) if it already has ``per_agent``."""
        with self._lock:
            if self._per_agent[agent_id] >= per_agent:
                return False
            self._per_agent[agent_id] += 1
            return True

    def release(self, agent_id: str) -> None:
        with self._lock:
            self._per_agent[agent_id] -= 1
            if self._per_agent[agent_id] <= 0:
                del self._per_agent[agent_id]

    def waiting(self, agent_id: str) -> int:
        with self._lock:
            return self._per_agent[agent_id]

    # --- waiting ----------------------------------------------------------------------------------------------

    def mark(self) -> int:
        """Take before claiming; ``wait(mark)`` returns at once if a NOTIFY came in meanwhile."""
        with self._lock:
            return self._generation

    async def wait(self, key: str, mark: int, timeout: float) -> int:
        """Until a NOTIFY that may concern ``key``, or ``timeout`` (shortened to the recheck interval).

        Returns the new mark, taken when the wait ended: the caller claims next.
        """
        self._ensure_listening()
        waiter = _Waiter(key, asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._generation != mark:
                return self._generation
            self._waiters.add(waiter)
            limit = min(timeout, self.recheck_s if self._listening else self.poll_s)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), max(limit, 0.0))
        finally:
            with self._lock:
                self._waiters.discard(waiter)
        with self._lock:
            return self._generation

    def waiters(self, key: str) -> int:
        """How many waits of ``key`` are waiting now (tests wait for one before storing what should wake it)."""
        with self._lock:
            return sum(1 for waiter in self._waiters if waiter.key == key)

    def wake(self, payload: str = "") -> None:
        """A NOTIFY arrived: wake the waits of the keys it names (an empty payload names nobody: wake all)."""
        named = {key for key in payload.split(",") if key}
        with self._lock:
            self._generation += 1
            chosen = [waiter for waiter in self._waiters if not named or waiter.key in named]
        for waiter in chosen:
            with contextlib.suppress(RuntimeError):  # that request's loop is closed: nobody waits there any more
                waiter.loop.call_soon_threadsafe(waiter.event.set)

    # --- the LISTEN thread ------------------------------------------------------------------------------------

    def _ensure_listening(self) -> None:
        """Start the LISTEN thread with the first wait (a process that never waits opens no connection)."""
        if connection.vendor != "postgresql":
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._listen, name=f"{self.name}-wakeups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the LISTEN thread and close its connection (tests: before the test database is dropped)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                conn = wakeup.listen_connection(self.channel)
            except Exception:
                log.warning("%s wakeups: cannot LISTEN; waits poll", self.name, exc_info=True)
                self._stop.wait(_RECONNECT_S)
                continue
            with self._lock:
                self._listening = True
            try:
                while not self._stop.is_set():
                    for notify in conn.notifies(timeout=_STOP_CHECK_S):
                        self.wake(notify.payload)
            except Exception:
                log.warning("%s wakeups: LISTEN connection lost; waits poll", self.name, exc_info=True)
            finally:
                with self._lock:
                    self._listening = False
                conn.close()
            self.wake()  # a NOTIFY may have been lost with the connection: every wait looks again
            self._stop.wait(_RECONNECT_S)


def let_request_thread_go() -> bool:
    """End this request's sync thread before a wait (call it from the event loop, between sync calls).

    Under daphne, Django enters an asgiref ``ThreadSensitiveContext`` per request; the first
    thread-sensitive ``sync_to_async`` call starts a one-thread executor for it, kept (idle)
    until the request ends. For a request that then waits 30 s, that is a thread per
    waiting agent. Shutting the executor down here lets its idle thread exit; the next
    thread-sensitive call starts a new one, which Django ends with the request. Do it only
    once this thread's database connection is given back: a thread that ends holding one
    would never return it to the pool.

    Nothing happens (``False``) under a sync parent (a sync middleware above the view runs
    the view's sync calls in its own thread, blocked while the view waits) or outside a
    request's context (tests' clients).
    """
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return False
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None:
        return False
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is None:
        return False
    executor.shutdown(wait=False)
    return True


WAITS = Waits()
