"""Long-running roles say they are alive: a row per process, refreshed every ``ROLE_HEARTBEAT_INTERVAL``."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from ops import actions
from tasks.engine import clock

log = logging.getLogger("aegis.ops")


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
            actions.record_role_heartbeat(self.role, self.instance, self.started_at, info)
        except Exception:  # the database may be away: the health check will say so
            log.warning("could not record the %s heartbeat", self.role, exc_info=True)
            close_old_connections()
            return False
        return True
