"""Long-running roles (bridge, dispatcher): a heartbeat row per process, their failure count, their metrics port.

The heartbeat row is refreshed every ``ROLE_HEARTBEAT_INTERVAL``; health checks and the dashboard read it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from aegis_site.core import clock
from aegis_site.core.models import RoleHeartbeat

log = logging.getLogger("aegis.ops")


def record_role_heartbeat(role: str, instance: str, started_at: datetime, info: dict[str, Any] | None = None) -> None:
    """Upsert the role process's heartbeat row (not audited: a sign of life, not an operator action)."""
    RoleHeartbeat.objects.update_or_create(
        role=role, instance=instance, defaults={"beat_at": clock.now(), "started_at": started_at, "info": info or {}}
    )


def serve_role_metrics() -> None:
    """Bridge and dispatcher: their counters on ``METRICS_PORT`` (Prometheus text at any path), when set."""
    from prometheus_client import start_http_server

    if settings.METRICS_PORT:
        start_http_server(settings.METRICS_PORT, addr=settings.METRICS_ADDR)


class RoleBeacon:
    """Call ``maybe_beat()`` from the role's loop; it writes at most once per interval and never raises."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = clock.now()
        self._last = 0.0

    def maybe_beat(self, **info: Any) -> bool:
        now = time.monotonic()
        if now - self._last < settings.ROLE_HEARTBEAT_INTERVAL:
            return False
        self._last = now
        try:
            record_role_heartbeat(self.role, self.instance, self.started_at, info)
        except Exception:  # the database may be away: the health check will say so
            log.warning("could not record the %s heartbeat", self.role, exc_info=True)
            close_old_connections()
            return False
        return True


class RoleFailed(Exception):
    """A role's steps kept failing: it must exit non-zero so that its supervisor restarts it."""


class FailedSteps:
    """Consecutive failed steps of one loop of a role, with the backoff before the next try.

    ``failed()`` returns how long to wait; once ``ROLE_MAX_FAILED_STEPS`` steps in
    a row failed, ``exhausted`` is true and the role exits (``RoleFailed``). One
    success starts the count again.
    """

    def __init__(
        self, what: str, logger: str = "aegis.ops", limit: int | None = None, base: float = 0.1, cap: float = 5.0
    ) -> None:
        self.what = what
        self.log = logging.getLogger(logger)
        self.limit = limit or settings.ROLE_MAX_FAILED_STEPS
        self.base = base
        self.cap = cap
        self.count = 0

    @property
    def exhausted(self) -> bool:
        return self.count >= self.limit

    def failed(self) -> float:
        self.count += 1
        self.log.error(
            "%s failed", self.what, extra={"consecutive_failures": self.count, "limit": self.limit}, exc_info=True
        )
        return min(self.base * 2 ** (self.count - 1), self.cap)

    def succeeded(self) -> None:
        if self.count:
            self.log.info("%s recovered", self.what, extra={"after_failures": self.count})
        self.count = 0

    def check(self) -> None:
        if self.exhausted:
            raise RoleFailed(f"{self.what} failed {self.count} times in a row")
