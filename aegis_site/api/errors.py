"""One JSON error shape for every API answer that is not a success.

    {"error": {"code": "not_found", "message": "Task 12 does not exist.", "fields": {...}}}

``code`` is stable (clients branch on it), ``message`` is for people, ``fields``
only on validation errors (the serializer's per-field messages). A body with
fields the endpoint does not take (``aegis_site.api.strict``) says so in the
message too, naming them: ``"The request is not valid: unknown field 'target'."`` Domain errors
(``aegis_site.core.errors.DomainError`` and the apps' subclasses) map here by their ``status``,
``code`` and ``field``, so views just call actions and this module imports no app.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from aegis_site.api.authentication import client_address
from aegis_site.api.exceptions import Conflict, TooLarge
from aegis_site.api.strict import READ_ONLY_FIELD, UNKNOWN_FIELD
from aegis_site.core import counters
from aegis_site.core.errors import DomainError

log = logging.getLogger("aegis.api")

_CODES = {
    status.HTTP_400_BAD_REQUEST: "invalid",
    status.HTTP_401_UNAUTHORIZED: "not_authenticated",
    status.HTTP_403_FORBIDDEN: "permission_denied",
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
    status.HTTP_406_NOT_ACCEPTABLE: "not_acceptable",
    status.HTTP_409_CONFLICT: "conflict",
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: "too_large",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
    status.HTTP_429_TOO_MANY_REQUESTS: "throttled",
}


def body(code: str, message: str, fields: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


# DRF's exception per status, for its default message when a domain error has none.
_ANSWERS: dict[int, type[exceptions.APIException]] = {
    status.HTTP_403_FORBIDDEN: exceptions.PermissionDenied,
    status.HTTP_404_NOT_FOUND: exceptions.NotFound,
    status.HTTP_409_CONFLICT: Conflict,
}


def _answer(error: DomainError) -> exceptions.APIException:
    """A domain error without a field: its message and code at its own status."""
    answer = _ANSWERS.get(error.status, exceptions.APIException)(str(error) or None, code=error.code)
    answer.status_code = error.status
    return answer


def _translate(exc: Exception) -> Exception:
    """Domain and Django errors as the DRF exceptions that carry their HTTP status."""
    if isinstance(exc, DomainError):
        if exc.field:
            return exceptions.ValidationError({exc.field: [str(exc)]}, code=exc.code)
        return _answer(exc)
    if isinstance(exc, ObjectDoesNotExist | Http404):
        return exceptions.NotFound(str(exc) or "Not found.")
    if isinstance(exc, PermissionDenied):
        return exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        return TooLarge()
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    details = getattr(exc, "details", None)  # a domain error's ids for clients: {"existing_job": 12, ...}
    # A refusal on a field with its own code (a job's submit checks) answers with that code and its message.
    refused = exc if isinstance(exc, DomainError) and exc.field and exc.code != "invalid" else None
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 handler (JSON under /api/, see server_error)
    request = context.get("request")
    if isinstance(exc, exceptions.Throttled) and request is not None:
        counters.RATE_LIMITED.labels(getattr(context.get("view"), "throttle_scope", None) or "client").inc()
        log.warning(
            "rate_limit",
            extra={"event": "rate_limit", "client": client_address(request), "path": request.path},
        )
    code = _CODES.get(response.status_code, "error")
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        if isinstance(codes, str) and codes not in {"invalid", "error"}:
            code = codes
    if isinstance(exc, exceptions.ValidationError):
        fields = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        message = str(refused) if refused is not None else _invalid_message(exc.get_codes())
        response.data = body(refused.code if refused is not None else "invalid", message, fields)
    else:
        detail = getattr(exc, "detail", None)
        response.data = body(code, str(detail) if detail is not None else str(exc))
    if isinstance(details, dict) and details:
        response.data["error"].update(details)
    return response


def _invalid_message(codes: Any) -> str:
    """``"The request is not valid."``, naming the unknown and read-only fields sent (dotted paths when nested)."""
    named: dict[str, list[str]] = {UNKNOWN_FIELD: [], READ_ONLY_FIELD: []}
    stack: list[tuple[str, Any]] = [("", codes)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else str(key), value) for key, value in item.items())
        elif isinstance(item, list):
            stack.extend((path, entry) for entry in item)
        elif item in named:
            named[item].append(path)
    parts = [
        f"{what} field{'s' if len(paths) > 1 else ''} {', '.join(repr(path) for path in sorted(paths))}"
        for what, paths in (("unknown", named[UNKNOWN_FIELD]), ("read-only", named[READ_ONLY_FIELD]))
        if paths
    ]
    return f"The request is not valid: {'; '.join(parts)}." if parts else "The request is not valid."


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """``handler404`` for paths under ``/api/``: the same JSON shape as the views."""
    return JsonResponse(body("not_found", "No such endpoint."), status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(body("server_error", "Internal error; it has been logged."), status=500)
