"""The ``LOGGING`` formatters: JSON lines (structlog), or one plain line per record for a terminal.

``configure`` (Django's ``LOGGING_CONFIG``) also routes what would otherwise write to the
stream on its own through the same handler: Python warnings, uncaught exceptions (main
thread, other threads, "exception ignored" in finalizers). With ``LOG_FORMAT=json`` every
line a process writes is then one JSON object.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
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


def configure(config: dict[str, Any]) -> None:
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # logger py.warnings, instead of warnings' own lines on stderr
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable


_uncaught_log = logging.getLogger("aegis.uncaught")


def _uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    _uncaught_log.critical("uncaught exception", exc_info=(kind, error, traceback))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # what threading's own hook ignores too
        return
    thread = args.thread.name if args.thread is not None else ""
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    _uncaught_log.error("uncaught exception in thread", exc_info=exc_info, extra={"thread_name": thread})


def _unraisable(unraisable: Any) -> None:
    error = unraisable.exc_value
    exc_info = (unraisable.exc_type, error, unraisable.exc_traceback) if error is not None else None
    _uncaught_log.error(
        unraisable.err_msg or "exception ignored", exc_info=exc_info, extra={"object": repr(unraisable.object)[:200]}
    )


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


def route_twisted_log() -> None:
    """Twisted's log into the stdlib logger ``twisted``, and with it the Python warnings Twisted takes over.

    daphne (at its default verbosity) sends Twisted's log nowhere and points ``warnings.showwarning``
    at it, so a warning raised while serving a request would vanish; an observer added before daphne
    starts keeps them, as JSON lines like any other record.
    """
    from twisted.logger import STDLibLogObserver, globalLogPublisher

    globalLogPublisher.addObserver(STDLibLogObserver(name="twisted"))  # type: ignore[arg-type]  # zope provider


def use_format(log_format: str) -> None:
    """Switch the root logger's handlers to ``plain`` or ``json`` after ``LOGGING`` was applied.

    ``manage.py run_all`` logs in the format it gives its roles (plain when ``LOG_FORMAT`` is unset, although
    the settings' default is JSON), so that the whole all-in-one stream is one format.
    """
    formatter = plain_formatter() if log_format == "plain" else json_formatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
