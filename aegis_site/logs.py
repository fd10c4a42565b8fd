"""The ``LOGGING`` formatters: JSON lines (structlog), or one plain line per record for a terminal."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _pre_chain() -> list[Any]:
    """What every stdlib record goes through: the request id bound in context, logger, level, ``extra``, time."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]


def json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
        foreign_pre_chain=_pre_chain(),
    )


def plain_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            plain_renderer,
        ],
        foreign_pre_chain=_pre_chain(),
    )


# Control characters (newlines above all) and the Unicode line separators, written as escapes: a value
# from outside (a username, a path) can then never start a line of its own and pass for another record.
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


def plain_renderer(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """``2026-11-27T18:00:00Z INFO aegis.tasks job submitted job_id=3 request_id=...``: one line per record.

    A traceback follows on lines of its own, each indented, so that none can be taken for a record.
    """
    exception = event.pop("exception", None)
    parts = (
        event.pop("timestamp", ""),
        str(event.pop("level", "")).upper(),
        event.pop("logger", ""),
        event.pop("event", ""),
    )
    head = " ".join(one_line(part) for part in parts)
    rest = " ".join(f"{one_line(key)}={one_line(value)}" for key, value in event.items())
    line = f"{head} {rest}".rstrip()
    if exception:
        line += "".join(f"\n    {one_line(text)}" for text in str(exception).splitlines())
    return line
