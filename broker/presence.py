"""Coalescing heartbeats: many per second in, one UPDATE per flush window out."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from django.db import transaction

from aegis_site.core import clock
from broker import outbox
from registry import actions as registry_actions
from registry.models import Agent

log = logging.getLogger("aegis.bridge")

# An unknown agent is asked for its hello at most this often.
HELLO_REQUEST_INTERVAL_S = 60.0


class HeartbeatBuffer:
    """The latest heartbeat time per agent since the last flush. Thread-safe."""

    def __init__(self) -> None:
        self._latest: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}  # agent id -> monotonic time we last asked it for a hello

    def add(self, agent_id: str, at: datetime) -> None:
        with self._lock:
            previous = self._latest.get(agent_id)
            if previous is None or at > previous:
                self._latest[agent_id] = at

    def __len__(self) -> int:
        with self._lock:
            return len(self._latest)

    def flush(self) -> int:
        """Write what accumulated in one statement; on failure keep it for the next flush."""
        with self._lock:
            batch, self._latest = self._latest, {}
        if not batch:
            return 0
        try:
            touched = registry_actions.touch_agents(batch)
            if touched < len(batch):
                self._ask_unknown_for_hello(list(batch))
            return touched
        except Exception:
            with self._lock:
                for agent_id, at in batch.items():
                    if agent_id not in self._latest or at > self._latest[agent_id]:
                        self._latest[agent_id] = at
            raise

    def _ask_unknown_for_hello(self, agent_ids: list[str]) -> None:
        """Heartbeats from agents the database does not know: their hello was published before any bridge
        subscribed (a new shared-subscription group gets no earlier and no retained messages). Ask again."""
        known = set(Agent.objects.filter(pk__in_array=agent_ids).values_list("pk", flat=True))
        now = time.monotonic()
        # Forget the asks that no longer hold anything back: the memory stays one entry per unknown agent
        # heard from in the last interval, not one per id ever heard from.
        self._asked = {
            agent_id: asked for agent_id, asked in self._asked.items() if now - asked < HELLO_REQUEST_INTERVAL_S
        }
        unknown = [
            agent_id
            for agent_id in agent_ids
            if agent_id not in known
            and now - self._asked.get(agent_id, -HELLO_REQUEST_INTERVAL_S) >= HELLO_REQUEST_INTERVAL_S
        ]
        if not unknown:
            return
        for agent_id in unknown:
            self._asked[agent_id] = now
        at = clock.now()
        with transaction.atomic():
            outbox.write([outbox.to_inbox(agent_id, "ping", at, hello=True) for agent_id in unknown])


class RevokedAgents:
    """Agents whose every certificate is revoked: their messages are dropped until Mosquitto, restarted
    with the new CRL, refuses them at the handshake. Refreshed from the registry every ``REVOKED_REFRESH_S``."""

    REVOKED_REFRESH_S = 10.0

    def __init__(self) -> None:
        self.agents: frozenset[str] = frozenset()
        self._refreshed = 0.0

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.agents

    def maybe_refresh(self) -> None:
        if time.monotonic() - self._refreshed < self.REVOKED_REFRESH_S:
            return
        try:
            self.agents = registry_actions.revoked_certificate_agents()
            self._refreshed = time.monotonic()
        except Exception:  # keep the last known set; the next window tries again
            log.warning("could not refresh the revoked agents", exc_info=True)
