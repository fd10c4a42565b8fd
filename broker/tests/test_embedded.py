"""The embedded broker's log: a delivery a killed client never acknowledged is one warning line."""

from __future__ import annotations

import io
import logging

from aegis_site.logs import plain_formatter
from broker.embedded import UnackedDeliveryFilter, quiet_unacked_deliveries


def _capture(logger: logging.Logger) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(plain_formatter())
    logger.addHandler(handler)
    return stream, handler


def test_amqtts_puback_timeout_traceback_becomes_one_warning_line():
    quiet_unacked_deliveries()
    quiet_unacked_deliveries()  # installing twice adds one filter
    logger = logging.getLogger("amqtt.broker")
    assert sum(isinstance(f, UnackedDeliveryFilter) for f in logger.filters) == 1
    stream, handler = _capture(logger)
    try:
        try:
            raise TimeoutError("Timeout waiting for PUBACK for packet ID 22")
        except TimeoutError:
            logger.exception("Task failed during broadcast shutdown: <Task>")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0]
    assert "without acknowledging a delivery (Timeout waiting for PUBACK for packet ID 22)" in lines[0]


def test_other_amqtt_errors_keep_their_traceback():
    quiet_unacked_deliveries()
    logger = logging.getLogger("amqtt.broker")
    stream, handler = _capture(logger)
    try:
        try:
            raise RuntimeError("something else broke")
        except RuntimeError:
            logger.exception("Broadcast loop stopped by exception")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ERROR" in text
    assert "Traceback" in text
    assert "something else broke" in text
