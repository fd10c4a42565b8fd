"""JSON bodies under the MQTT protocol's rules: one definition of bad input for both transports.

The body is read up to its limit (``API_MAX_BODY_BYTES``; an agent's views set
``max_body_bytes`` to the protocol's message size), then decoded by
``aegis_site.core.strict_json`` (as MQTT messages are): strict JSON (no NaN, no infinite numbers, no
duplicate keys), nested at most ``MAX_DEPTH`` levels, no NUL or lone surrogate
in any key or string (PostgreSQL stores neither; SQLite would, and the pages
showing them would fail). Too large is a 413, anything else a 400 whose ``code``
names the rule (``parse_error``, ``too_deep``, ``bad_string``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from aegis_site.api.exceptions import TooLarge
from aegis_site.core.strict_json import JsonRefused, decode_json

# The protocol's codes that mean more to a client than "parse_error".
_OWN_CODES = {"too_deep", "bad_string"}


def body_limit(view: Any) -> int:
    """The body size a view accepts: its ``max_body_bytes``, else ``API_MAX_BODY_BYTES`` (never more)."""
    limit = int(settings.API_MAX_BODY_BYTES)
    return min(limit, int(getattr(view, "max_body_bytes", limit)))


class LimitedJSONParser(JSONParser):
    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        context = parser_context or {}
        limit = body_limit(context.get("view"))
        request = context.get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and str(declared).isdigit() and int(declared) > limit:
            raise TooLarge(f"The request body is over {limit} bytes.")
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise TooLarge(f"The request body is over {limit} bytes.")
        try:
            return decode_json(data, max_bytes=limit)
        except JsonRefused as refused:
            if refused.code == "oversized":
                raise TooLarge(f"The request body is over {limit} bytes.") from None
            code = refused.code if refused.code in _OWN_CODES else "parse_error"
            raise ParseError(f"JSON parse error: {refused.message}", code=code) from None
