"""Strict JSON: the one definition of a well-formed document for both transports.

MQTT messages (``broker.protocol``) and HTTP bodies (``aegis_site.api.parsers``) are decoded
here: strict JSON (no NaN, no infinite numbers, no duplicate keys), nested at most
``MAX_DEPTH`` levels, no NUL or lone surrogate in any key or string (PostgreSQL stores
neither). A refusal is ``JsonRefused`` with a stable ``code``: ``empty``, ``oversized``,
``not_utf8``, ``not_json``, ``too_deep``, ``bad_string``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

MAX_DEPTH: Final = 32  # nesting of the whole document, envelope included
_BAD_CHARS: Final = re.compile("[\x00\ud800-\udfff]")


class JsonRefused(Exception):
    """A document that is not strict JSON under these rules; ``code`` never changes meaning."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def decode_json(payload: bytes, max_bytes: int) -> Any:
    """Any JSON document of at most ``max_bytes`` under the rules above."""
    if not payload:
        raise JsonRefused("empty", "empty payload")
    if len(payload) > max_bytes:
        raise JsonRefused("oversized", f"{len(payload)} bytes, the limit is {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonRefused("too_deep", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and the hooks' refusals
        raise JsonRefused("not_json", str(exc)[:200]) from None
    # Each check of the tree walk only runs when the raw text allows what it looks for: NUL and
    # lone surrogates can only arrive as \u escapes (strict JSON refuses raw control characters,
    # and valid UTF-8 holds no surrogates), and nesting deeper than MAX_DEPTH needs more than
    # MAX_DEPTH brackets. C-level scans spare most documents the walk, and a log line's brackets
    # ("worker[3]") the scan of every string.
    strings = "\\u" in text
    if strings or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_tree(data, strings)
    return data


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key in object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _check_tree(document: Any, strings: bool = True) -> None:
    """Bound nesting and (with ``strings``) refuse text PostgreSQL cannot store; iterative, so no input can
    exhaust the stack."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if strings and _BAD_CHARS.search(value):
                raise JsonRefused("bad_string", "text holds NUL or a lone surrogate")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise JsonRefused("too_deep", f"nested deeper than {MAX_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
