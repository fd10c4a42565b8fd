"""Request id, timing, the access log and ``slow_request``: every request gets an id (``X-Request-ID``) logged with it.

The access log is one ``request`` line (logger ``aegis.access``) per request, a log record like
any other; daphne's own access log, plain text on stdout, is off (``daphne -v 0``).

Sync and async capable: in daphne a sync middleware makes Django run everything below it,
async views included, in a thread of its own per request, blocked for as long as the view
awaits. A waiting long poll (``tasks.api.agent_views.claim``) would then hold a thread each.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from aegis_site.client_address import client_address
from ops.metrics.requests import WINDOW

log = logging.getLogger("aegis.http")
access = logging.getLogger("aegis.access")
_INCOMING_ID = re.compile(r"\A[A-Za-z0-9._-]{8,64}\Z")

GetResponse = Callable[[HttpRequest], HttpResponse] | Callable[[HttpRequest], Awaitable[HttpResponse]]


class RequestContextMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        request_id = _begin(request)
        started = time.perf_counter()
        try:
            response = cast(Callable[[HttpRequest], HttpResponse], self.get_response)(request)
        finally:
            elapsed = time.perf_counter() - started
        return _end(request, response, request_id, elapsed)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        request_id = _begin(request)
        started = time.perf_counter()
        try:
            response = await cast(Callable[[HttpRequest], Awaitable[HttpResponse]], self.get_response)(request)
        finally:
            elapsed = time.perf_counter() - started
        return _end(request, response, request_id, elapsed)


def _begin(request: HttpRequest) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _INCOMING_ID.match(incoming) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def _end(request: HttpRequest, response: HttpResponse, request_id: str, elapsed: float) -> HttpResponse:
    WINDOW.add(elapsed, response.status_code)
    response["X-Request-ID"] = request_id
    line: dict[str, object] = {
        "path": request.path[:200],
        "method": request.method,
        "status": response.status_code,
        "duration_ms": round(elapsed * 1000, 1),
    }
    access.info("request", extra=line | {"client": client_address(request)})
    if elapsed * 1000 >= settings.SLOW_REQUEST_MS:
        log.warning("slow_request", extra={"event_name": "slow_request"} | line)
    structlog.contextvars.clear_contextvars()
    return response
