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


def plain_renderer(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """``2026-11-27T18:00:00Z INFO aegis.tasks job submitted job_id=3 request_id=...``."""
    parts = (
        event.pop("timestamp", ""),
        str(event.pop("level", "")).upper(),
        event.pop("logger", ""),
        event.pop("event", ""),
    )
    head = " ".join(str(part) for part in parts)
    rest = " ".join(f"{key}={value}" for key, value in event.items())
    return f"{head} {rest}".rstrip()
