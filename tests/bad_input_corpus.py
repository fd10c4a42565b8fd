"""One corpus of hostile input for every edge: the HTTP API, the admin and the MQTT bridge (issue 13, item 6).

Each case says what ``broker.protocol`` answers for it, so the same bytes are
judged by the same rules whichever way they come in. ``tests/test_bad_input.py``
sends them to every write and list endpoint of the API, every admin changelist
and the job form, and publishes them to the bridge through Mosquitto.

- ``VALUES``: JSON text of one value, spliced into an otherwise valid body where
  the body holds arbitrary JSON (an event's ``result``, a job's ``payload``...).
- ``DOCUMENTS``: whole bodies that are wrong before any field is read.
- ``QUERY_VALUES``: query-string values for filters, searches, orderings and cursors.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from broker.protocol import MAX_DEPTH, MAX_MESSAGE_BYTES

SLOT = "@HOSTILE@"  # where a template takes the hostile value


@dataclass(frozen=True)
class Hostile:
    name: str
    text: str | bytes  # JSON text of a value (VALUES) or the raw bytes of a body (DOCUMENTS)
    mqtt_code: str  # broker.protocol's ProtocolError code for a message that carries it
    oversized: bool = False  # refused for its size: 413 over HTTP


def _nested(depth: int, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + closing * depth


VALUES: tuple[Hostile, ...] = (
    # Python's json recursion: RecursionError, not ValueError, and a 500 where it was not caught.
    Hostile("deep_array_5000", _nested(5000), "too_deep"),
    Hostile("deep_object_5000", '{"a":' * 5000 + "1" + "}" * 5000, "too_deep"),
    # Parses fine, but deeper than the protocol allows (the MQTT message would be dropped).
    Hostile("over_max_depth", _nested(MAX_DEPTH + 1), "too_deep"),
    # PostgreSQL refuses NUL in text and jsonb, and lone surrogates in jsonb; SQLite stores them.
    Hostile("nul_in_string", '"a\\u0000b"', "bad_string"),
    Hostile("nul_in_key", '{"k\\u0000": 1}', "bad_string"),
    Hostile("lone_high_surrogate", '"\\ud800"', "bad_string"),
    Hostile("lone_low_surrogate", '{"x": ["\\udfff"]}', "bad_string"),
    # Not JSON by RFC 8259, although Python's json accepts them by default.
    Hostile("nan", "NaN", "not_json"),
    Hostile("infinity", "-Infinity", "not_json"),
    Hostile("float_overflow", "1e999", "not_json"),  # float('inf'): no database stores it as JSON
    Hostile("duplicate_keys", '{"a": 1, "a": 2}', "not_json"),
    Hostile("int_5000_digits", "9" * 5000, "not_json"),  # past Python's int-parsing limit: ValueError
    Hostile("oversized_string", '"' + "x" * (MAX_MESSAGE_BYTES + 1024) + '"', "oversized", oversized=True),
)

DOCUMENTS: tuple[Hostile, ...] = (
    Hostile("top_level_deep_array", _nested(5000).encode(), "too_deep"),
    Hostile("not_utf8", b'{"a": "\xff\xfe"}', "not_utf8"),
    Hostile("utf8_encoded_surrogate", b'{"a": "\xed\xa0\x80"}', "not_utf8"),
    Hostile("raw_nul_byte", b'{"a": "\x00"}', "not_json"),  # a raw control character inside a string
    Hostile("truncated", b'{"a": [1, 2', "not_json"),
    Hostile("not_an_object", b'"just a string"', "not_object"),
)

# Query-string values. Django decodes %ED%A0%80 with errors="replace", so no surrogate gets past it;
# NUL does (PostgreSQL then refuses the query).
QUERY_VALUES: tuple[str, ...] = (
    "\x00",
    "web\x00",
    "a" * 5000,
    "9" * 30,  # past bigint
    "²",  # str.isdigit() says yes, int() says no
    "-1",
    "1e999",
    "'; SELECT 1; --",
    "%",
    "__proto__",
    "2026-13-45T99:99:99Z",
)


def _cursor(position: str) -> str:
    """A cursor as DRF's CursorPagination encodes one, with a hand-made position."""
    return base64.b64encode(f"o=0&r=0&p={position}".encode()).decode()


# Hand-made cursors this server never makes (400 on any list): not a cursor at all, or a position holding NUL.
BAD_CURSORS: tuple[str, ...] = (
    _cursor("\x00"),
    base64.b64encode(b"o=-1&r=1").decode(),
    "not base64 at all!",
    base64.b64encode(b"\xff\xfe").decode(),
)
# Positions no list ordered by an integer id can hold (400 there; "abc" is a fine agent id).
BAD_ID_CURSORS: tuple[str, ...] = (_cursor("abc"), _cursor("9" * 30), _cursor("1.5"), _cursor("-1"), _cursor("²"))
# Odd but harmless: DRF clamps the offset (answered like any page).
CURSORS: tuple[str, ...] = (*BAD_CURSORS, *BAD_ID_CURSORS, base64.b64encode(b"o=99999999999999999999&p=1").decode())


def body_with(template: dict[str, Any], hostile: Hostile) -> bytes:
    """``template`` as JSON with its ``SLOT`` string replaced by the hostile value's text."""
    assert isinstance(hostile.text, str)
    text = json.dumps(template)
    assert f'"{SLOT}"' in text, f"the template has no {SLOT}: {template}"
    return text.replace(f'"{SLOT}"', hostile.text).encode()


def bodies(template: dict[str, Any]) -> list[tuple[Hostile, bytes]]:
    """Every case of the corpus as a body for one endpoint: the values in its slot, then the whole documents."""
    spliced = [(hostile, body_with(template, hostile)) for hostile in VALUES]
    return spliced + [(hostile, hostile.text) for hostile in DOCUMENTS if isinstance(hostile.text, bytes)]
