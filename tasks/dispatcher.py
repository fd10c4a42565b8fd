"""The dispatcher role: expire leases, mark silent agents offline, assign queued tasks to online agents.

Each step is a method that returns whether it did work (healthchecks'
``sendalerts`` shape); the loop repeats steps while they find work and otherwise
sleeps until a NOTIFY or the poll interval. A NOTIFY may name agents (new work
pinned to them, or room freed on them): those are claimed for first. With an
MQTT connection of its own (``broker.direct``) the dispatcher publishes the
assignments (and lease-expiry cancels) it commits, handing its publisher to each
claim as an argument; otherwise the bridge does. Every step claims its rows with
``SKIP LOCKED`` or a conditional UPDATE, so several replicas can run at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection

from aegis_site.core import clock, counters, wakeup
from aegis_site.core.roles import FailedSteps, RoleBeacon
from aegis_site.core.wakeup import Listener
from broker import direct
from broker.direct import DirectPublisher
from broker.outbox import DirectSink
from registry import actions as registry_actions
from tasks import actions
from tasks.engine import claim

log = logging.getLogger("aegis.dispatcher")

_AGENTS_PER_TRANSACTION = 50  # bounds how long one claim transaction holds its agent rows
_BUSY_RETRY_S = 0.02  # an agent passed over because another transaction held it is tried again this soon

_PINNED_SQL = """
SELECT DISTINCT t.agent_id FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN agents a ON a.id = t.agent_id
WHERE t.state = 'queued' AND t.not_before <= %s AND j.state IN ('scheduled', 'running') AND t.pinned
  AND a.connectivity = 'online' AND a.admin_state = 'active' AND a.transport = 'mqtt'
LIMIT %s
"""
_ANY_READY_SQL = """
SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.state = 'queued' AND t.not_before <= %s AND j.state IN ('scheduled', 'running') AND NOT t.pinned
  AND j.mode = 'any'
LIMIT 1
"""
# Queued work that became claimable in a window without anyone saying so: a retry's backoff, a requeue's
# ``not_before`` or a job's start time passed (``announce_due``).
_CAME_DUE_SQL = """
SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.state = 'queued' AND t.not_before > %s AND t.not_before <= %s AND j.state IN ('scheduled', 'running')
LIMIT 1
"""
# Idle agents first (holding nothing), then every dispatchable agent; least recently seen first in each part.
# Only MQTT agents: an HTTP agent claims its own work (docs/api.md), a push to its inbox would reach nobody.
_IDLE_FIRST_SQL = """
SELECT id FROM (
    SELECT id, 0 AS part, last_seen_at FROM (
        SELECT a.id, a.last_seen_at FROM agents a
        WHERE a.connectivity = 'online' AND a.admin_state = 'active' AND a.transport = 'mqtt' AND NOT EXISTS (
            SELECT 1 FROM tasks h WHERE h.agent_id = a.id AND h.state IN ('assigned', 'running'))
        ORDER BY a.last_seen_at LIMIT %s) idle
    UNION ALL
    SELECT id, 1 AS part, last_seen_at FROM (
        SELECT a.id, a.last_seen_at FROM agents a
        WHERE a.connectivity = 'online' AND a.admin_state = 'active' AND a.transport = 'mqtt'
        ORDER BY a.last_seen_at LIMIT %s) anyone
) candidates ORDER BY part, last_seen_at
"""


class Dispatcher:
    def __init__(self, batch_size: int | None = None, poll_interval: float | None = None) -> None:
        self.batch_size = batch_size or settings.DISPATCHER_BATCH_SIZE
        self.poll_interval = poll_interval or settings.DISPATCHER_POLL_INTERVAL
        self.stop = threading.Event()
        self.direct: DirectPublisher | None = None
        self.hints: set[str] = set()  # agents named by NOTIFY payloads, claimed for first
        # Agents the last pass found locked by another transaction (``claim_pg``'s SKIP LOCKED): claimed for once
        # more after ``_BUSY_RETRY_S`` (a heartbeat flush or a hello held them; another dispatcher may have).
        self.busy: set[str] = set()
        self.failed: list[str] = []  # the steps that raised in the last ``step()``
        self.due_checked_at: datetime | None = None  # ``announce_due``'s window starts here

    def sink(self) -> DirectSink | None:
        """Its own publisher while connected, for what it writes to the outbox; ``None``: the bridge publishes."""
        return None if self.direct is None else self.direct.sink()

    def expire_leases(self) -> bool:
        expired = actions.expire_leases(self.batch_size, sink=self.sink())
        counters.LEASE_EXPIRIES.inc(expired)
        return expired > 0

    def mark_silent_agents_offline(self) -> bool:
        return (
            registry_actions.mark_silent_agents_offline(
                settings.AGENT_HEARTBEAT_INTERVAL, settings.AGENT_OFFLINE_AFTER_MISSED
            )
            > 0
        )

    def assign(self) -> bool:
        """Claim up to ``batch_size`` tasks for each candidate agent: one transaction per group of agents.

        Agents named by the NOTIFY that woke us go first, before the candidate
        query: a job pinned to an agent reaches it one query sooner. Agents another
        transaction holds are passed over, not waited for: replicas woken by the same
        NOTIFY split the agents between them. What was passed over is tried once more
        on the next pass (``busy``); passed over again, it is left to whoever holds it.
        """
        retried, self.busy = self.busy, set()
        hinted, self.hints = sorted(self.hints | retried), set()
        assigned = self._claim(hinted) if hinted else 0
        assigned += self._claim([agent_id for agent_id in self.candidate_agents() if agent_id not in hinted])
        self.busy -= retried
        if self.direct is not None:
            self.direct.flush()
        if assigned:
            log.info("assigned tasks", extra={"count": assigned})
        return assigned > 0

    def _claim(self, agent_ids: list[str]) -> int:
        assigned = 0
        for start in range(0, len(agent_ids), _AGENTS_PER_TRANSACTION):
            group = agent_ids[start : start + _AGENTS_PER_TRANSACTION]
            claimed = actions.claim_for_agents(group, self.batch_size, sink=self.sink(), skip_busy=True)
            assigned += sum(len(assignments) for assignments in claimed.values())
            self.busy.update(agent_id for agent_id in group if agent_id not in claimed)
        return assigned

    def candidate_agents(self) -> list[str]:
        """Dispatchable agents that have claimable work: pinned tasks first, then any-mode takers, idle ones first.

        Raw SQL: it runs before every assignment, and building these queries with the ORM
        cost about ten times what the database spends on them.
        """
        now = connection.ops.adapt_datetimefield_value(clock.now())
        with connection.cursor() as cursor:
            cursor.execute(_PINNED_SQL, [now, self.batch_size])
            candidates = [agent_id for (agent_id,) in cursor.fetchall()]
            cursor.execute(_ANY_READY_SQL, [now])
            if cursor.fetchone() is not None:
                cursor.execute(_IDLE_FIRST_SQL, [self.batch_size, self.batch_size])
                taken = set(candidates)
                for (agent_id,) in cursor.fetchall():
                    if agent_id not in taken:
                        taken.add(agent_id)
                        candidates.append(agent_id)
        return candidates

    def next_rate_token_in(self) -> float:
        """Seconds until a rate-limited job with queued work gets its next token (the poll interval if none sooner).

        Nothing NOTIFYs when a token comes due: waiting the whole poll interval made a late claim of every
        token, and "60 per minute" ran at about 40.
        """
        now = clock.now()
        soonest = self.poll_interval
        for due in self.rate_tokens_due(now):
            soonest = min(soonest, max((due - now).total_seconds(), 0.0))
        return soonest

    def announce_due(self) -> bool:
        """Wake the HTTP agents' waiting claims for work that became claimable without a NOTIFY since the last look.

        A queued task's ``not_before`` passing (a retry's backoff, a lease expiry's requeue,
        a job's start time) or a rate token coming due is no commit, so nothing NOTIFYs; this
        loop already wakes for those moments (``next_rate_token_in``, the poll interval). One
        general NOTIFY then, and a long poll (``tasks.engine.longpoll``) need not look again
        every few seconds on its own: with 1,000 agents waiting that was 200 empty claims a
        second. Returns False: it did no work itself.
        """
        now = clock.now()
        since, self.due_checked_at = self.due_checked_at, now
        if since is None:
            return False
        came_due = any(since < due <= now for due in self.rate_tokens_due(now))
        if not came_due:
            adapt = connection.ops.adapt_datetimefield_value
            with connection.cursor() as cursor:
                cursor.execute(_CAME_DUE_SQL, [adapt(since), adapt(now)])
                came_due = cursor.fetchone() is not None
        if came_due:
            wakeup.notify_on_commit()  # outside a transaction: NOTIFY at once
        return False

    def rate_tokens_due(self, now: datetime) -> list[datetime]:
        """When the next token of each rate-limited job with queued work comes due."""
        return [
            full_at - timedelta(seconds=(claim.rate_burst(rate) - 1) * 60 / rate)
            for rate, full_at in claim.rate_buckets_waiting(now)
        ]

    def step(self) -> bool:
        """Run every step once; ``self.failed`` names the ones that raised (logged, never re-raised here)."""
        did_work = False
        self.failed = []
        # Assignment first: a NOTIFY for new work should reach an agent before the housekeeping runs.
        for name in ("assign", "expire_leases", "mark_silent_agents_offline", "announce_due"):
            try:
                did_work |= getattr(self, name)()
            except Exception:
                log.exception("dispatcher step %s failed", name)
                self.failed.append(name)
                close_old_connections()
        return did_work

    def run(self) -> None:
        log.info("dispatcher started", extra={"batch_size": self.batch_size, "poll_interval": self.poll_interval})
        listener = Listener()
        beacon = RoleBeacon("dispatcher")
        if direct.enabled():
            self.direct = DirectPublisher()
            self.direct.start()
        failures = FailedSteps("dispatcher step", "aegis.dispatcher")
        try:
            while not self.stop.is_set():
                close_old_connections()
                did_work = self.step()
                if self.failed:
                    # No heartbeat while failing: /healthz/comprehensive and the alerts see a stale role,
                    # and past ROLE_MAX_FAILED_STEPS the process exits for its supervisor to restart it.
                    delay = failures.failed()
                    failures.check()
                    self.stop.wait(delay)
                    continue
                failures.succeeded()
                beacon.maybe_beat(publishes=self.direct is not None)
                if not did_work:
                    wait = min(self.poll_interval, self.next_rate_token_in())
                    if self.busy:
                        wait = min(wait, _BUSY_RETRY_S)
                    self.hints |= listener.wait(wait, self.stop) or set()
        finally:
            if self.direct is not None:
                self.direct.stop()
            listener.close()
            log.info("dispatcher stopped")
