"""Counters and histograms incremented where things happen (each role process exports its own).

With several web workers, set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode): every worker writes its values there and ``/metrics`` sums them.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

AUTH_FAILURES = Counter("aegis_auth_failures", "Failed API authentications.", ["scheme"])
RATE_LIMITED = Counter("aegis_rate_limited", "API requests refused by a throttle.", ["scope"])
MQTT_MESSAGES = Counter("aegis_mqtt_messages", "MQTT messages handled by the bridge.", ["direction", "type"])
MQTT_DROPPED = Counter("aegis_mqtt_dropped", "Malformed or unusable MQTT messages dropped.", ["reason"])
LEASE_EXPIRIES = Counter("aegis_lease_expiries", "Task leases that expired (delivery or execution timeout).")
TASK_RETRIES = Counter("aegis_task_retries", "Failed or rejected attempts put back in the queue (with backoff).")
TASK_LOG_GAPS = Counter(
    "aegis_task_log_gaps", "Task output chunks stored with a seq past the next expected one (a gap opened)."
)
TASK_LOG_CHUNKS = Counter("aegis_task_log_chunks", "Task output chunks stored.")
TASK_LOG_BYTES = Counter("aegis_task_log_bytes", "Task output bytes stored.")
TIME_TO_ASSIGNMENT = Histogram(
    "aegis_time_to_assignment_seconds",
    "From a task becoming claimable (not_before) to its assignment, on PostgreSQL's claim path.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TASK_DURATION = Histogram(
    "aegis_task_duration_seconds",
    "From a task's start (accepted) to its end, for tasks that ended on an agent's report.",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600),
)
DB_QUERY_DURATION = Histogram(
    "aegis_db_query_duration_seconds",
    "Duration of the queries run through Django's cursors (the claim's prepared statements excepted).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def time_queries(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created``: time every query of the connection into ``DB_QUERY_DURATION``.

    With the connection pool the signal fires on every checkout of the same
    ``DatabaseWrapper``, whose ``execute_wrappers`` outlives the checkout: the
    wrapper goes in once, or after ~1,000 checkouts every query nests a thousand
    timers deep and raises ``RecursionError``.
    """
    if _timed not in connection.execute_wrappers:
        connection.execute_wrappers.append(_timed)


def _timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        DB_QUERY_DURATION.observe(time.perf_counter() - started)
