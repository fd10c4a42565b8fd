"""A failed password login (admin or ``/api/v1/auth/token/``) is an ``auth_failed`` event, like a bad token."""

from __future__ import annotations

import logging
from typing import Any

from ops.metrics import counters

log = logging.getLogger("aegis.api")


def log_failed_login(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    """``user_login_failed``: the username and the client address; Django has already masked the password."""
    counters.AUTH_FAILURES.labels("password").inc()
    log.warning(
        "auth_failed",
        extra={
            "event": "auth_failed",
            "scheme": "password",
            "username": str(credentials.get("username", ""))[:150],
            "client": request.META.get("REMOTE_ADDR", "") if request is not None else "",
            "path": request.path if request is not None else "",
        },
    )
