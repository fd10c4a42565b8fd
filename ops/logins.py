"""Password logins (the admin's form, ``/api/v1/auth/token/``): each failure an ``auth_failed`` event, and a lockout.

django-axes counts failures per username and per client address (settings
``LOGIN_FAILURE_LIMIT``, ``LOGIN_COOLOFF``); a login refused because of it answers
429 and is a ``rate_limit`` event, like a throttled API request.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.exceptions import AxesBackendPermissionDenied
from axes.helpers import get_client_username, get_cool_off, get_lockout_message
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import Throttled
from rest_framework.request import Request

from aegis_site.client_address import client_address
from aegis_site.core import counters

log = logging.getLogger("aegis.api")


def log_failed_login(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    """``user_login_failed``: the username and the client address; Django has already masked the password.

    A login refused by the lockout (its password never checked) is the ``rate_limit`` line instead.
    """
    if getattr(request, "aegis_login_refused", False):
        return
    counters.AUTH_FAILURES.labels("password").inc()
    _log_password_event("auth_failed", str(credentials.get("username", "")), request)


def log_lockout(request: Any, username: str) -> None:
    counters.RATE_LIMITED.labels("login").inc()
    _log_password_event("rate_limit", username, request)


def _log_password_event(event: str, username: str, request: Any) -> None:
    """One ``auth_failed`` or ``rate_limit`` line of a password login: who tried, from where, at which path."""
    log.warning(
        event,
        extra={
            "event": event,
            "scheme": "password",
            "username": username[:150],
            "client": client_address(request) if request is not None else "",
            "path": request.path if request is not None else "",
        },
    )


def retry_after(request: Any) -> int:
    cool_off = get_cool_off(request)
    return max(1, math.ceil(cool_off.total_seconds())) if cool_off else 60


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the admin's login form while its username or address is locked out."""
    # axes' async middleware passes the credentials in the wrong place; the request carries them either way.
    log_lockout(request, str(get_client_username(request, getattr(request, "axes_credentials", None)) or ""))
    response = HttpResponse(get_lockout_message(), status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after(request))
    return response


class LockoutBackend(AxesStandaloneBackend):
    """axes' check before the password backends, for logins that come with a request.

    ``authenticate()`` without a request (the test client's ``login()``, a shell)
    has no client address to count against; it goes straight to the next backend.
    On the API (``/api/v1/auth/token/``, a DRF request) a locked-out login is a 429
    like any throttled request; the admin's form gets ``lockout_response``.
    """

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if request is None:
            return None
        try:
            return super().authenticate(request, username, password, **kwargs)
        except AxesBackendPermissionDenied:
            request.aegis_login_refused = True
            if isinstance(request, Request):
                raise Throttled(wait=retry_after(request)) from None
            raise
