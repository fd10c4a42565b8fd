"""Request id, timing and ``slow_request``: every request gets an id (``X-Request-ID``) logged with it."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import structlog
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ops.metrics.requests import WINDOW

log = logging.getLogger("aegis.http")
_INCOMING_ID = re.compile(r"\A[A-Za-z0-9._-]{8,64}\Z")


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _INCOMING_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            elapsed = time.perf_counter() - started
        WINDOW.add(elapsed, response.status_code)
        response["X-Request-ID"] = request_id
        if elapsed * 1000 >= settings.SLOW_REQUEST_MS:
            log.warning(
                "slow_request",
                extra={
                    "event_name": "slow_request",
                    "path": request.path[:200],
                    "method": request.method,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
        structlog.contextvars.clear_contextvars()
        return response
