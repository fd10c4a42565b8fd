"""Coalescing heartbeats: many per second in, one UPDATE per flush window out."""

from __future__ import annotations

import threading
from datetime import datetime

from registry import actions as registry_actions


class HeartbeatBuffer:
    """The latest heartbeat time per agent since the last flush. Thread-safe."""

    def __init__(self) -> None:
        self._latest: dict[str, datetime] = {}
        self._lock = threading.Lock()

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
            return registry_actions.touch_agents(batch)
        except Exception:
            with self._lock:
                for agent_id, at in batch.items():
                    if agent_id not in self._latest or at > self._latest[agent_id]:
                        self._latest[agent_id] = at
            raise
