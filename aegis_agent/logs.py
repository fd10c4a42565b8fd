"""The agent's log lines in the control plane's two formats, with the standard library only.

``LOG_FORMAT=plain`` (the default): ``2026-11-27T18:00:00.123456Z INFO aegis_agent.simulate all 3 agents online``,
one line per record, ``extra`` fields as ``key=value``, a traceback on indented lines of its own.
``LOG_FORMAT=json``: one JSON object per line (``event``, ``logger``, ``level``, the extras, ``timestamp``).

These are the lines ``aegis_site/logs.py`` writes (structlog there; this package must run without Django or
structlog), so that the all-in-one stream (``manage.py run_all``) is one format whichever process wrote a line
(``aegis_agent/tests/test_logs.py`` compares the two).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

FORMATS = ("plain", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Control characters (newlines above all) and the Unicode line separators as escapes: a value from outside
# can never start a line of its own and pass for another record (as aegis_site/logs.py does).
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x85: "\\x85",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(value: object) -> str:
    return str(value).translate(_ESCAPES)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_FIELDS}


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head = " ".join(
            one_line(part) for part in (_timestamp(record), record.levelname, record.name, record.getMessage())
        )
        rest = " ".join(f"{one_line(key)}={one_line(value)}" for key, value in _extras(record).items())
        line = f"{head} {rest}".rstrip()
        exception = self.formatException(record.exc_info) if record.exc_info else ""
        if exception:
            line += "".join(f"\n    {one_line(text)}" for text in exception.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"event": record.getMessage(), "logger": record.name, "level": record.levelname.lower()}
        event |= _extras(record)
        event["timestamp"] = _timestamp(record)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=repr)


def configure(level: str = "INFO", log_format: str | None = None) -> None:
    """One handler on the root logger (stderr) in ``log_format``, or in ``LOG_FORMAT`` (plain when unset)."""
    chosen = log_format or os.environ.get("LOG_FORMAT", "") or "plain"
    if chosen not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be json or plain, got {chosen!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
