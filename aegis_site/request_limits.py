"""Requests refused at the door: NUL in the URL, and bodies over their limit, chunked ones included.

``RefuseNulMiddleware`` (Django): a NUL in the path or the query string reaches no
view. PostgreSQL refuses NUL in any text parameter, so a filter, search, ordering
or id holding one (``?version=%00``) ended in a 500 on some page or other; here it
is a 400 (the API's JSON shape under ``/api/``). Lone surrogates cannot arrive
this way: Django decodes the query string with ``errors="replace"``.

``BodyLimit`` (ASGI, wraps the Django application in ``aegis_site.asgi``): daphne
(twisted) buffers the whole request body, to a temporary file past 100 KB, before the
application sees any of it, and Django copies it again. A declared
``Content-Length`` over the limit is answered 413 without the body being read. A
chunked body has no ``Content-Length``, and Django REST framework then reads an
empty body (a chunked event arrived as ``{}``); here it is read up to the limit, a
413 past it, and otherwise handed on with its length, so it is parsed like any
other. Limits: ``API_MAX_BODY_BYTES`` under ``/api/``, Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` elsewhere (the admin's forms). The proxy in front
(nginx ``client_max_body_size``) is what refuses a huge body before it is buffered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from aegis_site.api.errors import body as error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # Django's handler types its arguments its own way


class RefuseNulMiddleware(MiddlewareMixin):
    """Sync and async capable (``MiddlewareMixin``): a sync-only middleware would hold a thread per request."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if "\x00" in request.path or "\x00" in request.META.get("QUERY_STRING", "") or _nul_in_query(request):
            message = "The URL holds a NUL character."
            if request.path.startswith("/api/"):
                return JsonResponse(error_body("bad_string", message), status=400)
            return HttpResponseBadRequest(message)
        return None


def _nul_in_query(request: HttpRequest) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists())


def body_limit(path: str) -> int | None:
    if path.startswith("/api/"):
        return int(settings.API_MAX_BODY_BYTES)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return None if limit is None else int(limit)


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        headers = list(scope.get("headers") or [])
        declared = [value for name, value in headers if name.lower() == b"content-length"]
        if declared:
            if len(declared) > 1 or not declared[0].isdigit():
                await _answer(send, scope, 400, "bad_request", "Content-Length is not one whole number.")
            elif limit is not None and int(declared[0]) > limit:
                await _answer(send, scope, 413, "too_large", f"The request body is over {limit} bytes.")
            else:
                await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if limit is not None and len(body) > limit:
                await _answer(send, scope, 413, "too_large", f"The request body is over {limit} bytes.")
                return
            if not message.get("more_body", False):
                break
        if body:  # chunked: give it the length it did not declare, so Django and DRF read it
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; after it, the connection's own messages (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _answer(send: Send, scope: Scope, status: int, code: str, message: str) -> None:
    if scope["path"].startswith("/api/"):
        content, content_type = json.dumps(error_body(code, message)).encode(), b"application/json"
    else:
        content, content_type = message.encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", content_type), (b"content-length", str(len(content)).encode())]
    # The unread body stays on the connection: close it rather than parse the rest as the next request.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
