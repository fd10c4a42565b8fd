"""Gauges read at scrape time from the database and the machine (registered in the web process only).

Every query is bounded: counts of live tasks use the queue's partial index, the
finished ones come from the jobs' counters, never a COUNT(*) over all tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psutil
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min, Sum
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aegis_site.core import clock
from aegis_site.core.models import RoleHeartbeat
from broker.models import OutboxMessage
from notify.models import Delivery, DeliveryState
from ops.metrics import certificates
from registry.models import Agent
from tasks.models import HELD_STATES, Job, Task, TaskState

log = logging.getLogger("aegis.ops")


def data_dir_usage() -> Any | None:
    """``psutil.disk_usage`` of ``DATA_DIR``, or ``None`` (logged) when it cannot be read: a missing
    directory (a fresh host, a volume not mounted) must not turn the whole scrape into a 500."""
    try:
        return psutil.disk_usage(str(settings.DATA_DIR))
    except OSError as exc:
        log.warning("metrics: disk usage of DATA_DIR %s unavailable: %s", settings.DATA_DIR, exc.strerror or exc)
        return None


DEAD_COUNT_CAP = 100_000  # dead deliveries are counted up to this (no index on state but for pending)


def notification_backlog() -> Iterator[Metric]:
    """Deliveries waiting (pending, the partial index), how long the oldest due one has waited, and the dead.

    The due age grows only when no notifier takes due deliveries: ones waiting for a retry
    (``next_attempt_at`` in the future) are not due. It is 0 with nothing due.
    """
    now = clock.now()
    pending = Delivery.objects.filter(state=DeliveryState.PENDING)
    yield GaugeMetricFamily(
        "aegis_notify_pending", "Notification deliveries pending (due or retrying).", value=pending.count()
    )
    oldest = pending.filter(next_attempt_at__lte=now).aggregate(oldest=Min("next_attempt_at"))["oldest"]
    age = (now - oldest).total_seconds() if oldest else 0.0
    yield GaugeMetricFamily(
        "aegis_notify_oldest_due_age_seconds", "Seconds the oldest due notification delivery has waited.", value=age
    )
    dead = Delivery.objects.filter(state=DeliveryState.DEAD)[: DEAD_COUNT_CAP + 1].count()
    yield GaugeMetricFamily(
        "aegis_notify_dead", f"Dead-lettered notification deliveries (counted up to {DEAD_COUNT_CAP + 1}).", value=dead
    )


class DomainCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._database()
        except Exception:  # a scrape must answer even when the database does not
            log.warning("metrics: database gauges unavailable", exc_info=True)
        yield from self._machine()
        try:
            yield from certificates.collect(clock.now())
        except Exception:  # nor when a certificate file cannot be read
            log.warning("metrics: certificate gauges unavailable", exc_info=True)

    def _database(self) -> Iterator[Metric]:
        agents = GaugeMetricFamily(
            "aegis_agents", "Agents by connectivity and admin state.", labels=["connectivity", "admin_state"]
        )
        for row in Agent.objects.values("connectivity", "admin_state").annotate(n=Count("id")).order_by():
            agents.add_metric([row["connectivity"], row["admin_state"]], row["n"])
        yield agents

        tasks = GaugeMetricFamily(
            "aegis_tasks", "Tasks by state and kind (finished ones from the jobs' counters).", labels=["state", "kind"]
        )
        live = Task.objects.filter(state__in=[TaskState.QUEUED, *HELD_STATES])
        for row in live.values("state", "kind").annotate(n=Count("id")).order_by():
            tasks.add_metric([row["state"], row["kind"]], row["n"])
        finished = Job.objects.values("kind").annotate(
            succeeded=Sum("tasks_succeeded"), failed=Sum("tasks_failed"), canceled=Sum("tasks_canceled")
        )
        for row in finished.order_by():
            for state in ("succeeded", "failed", "canceled"):
                tasks.add_metric([state, row["kind"]], row[state] or 0)
        yield tasks

        queued = Task.objects.filter(state=TaskState.QUEUED)
        depth = queued.count()
        oldest = queued.aggregate(oldest=Min("created_at"))["oldest"] if depth else None
        yield GaugeMetricFamily("aegis_queue_depth", "Queued tasks.", value=depth)
        age = (clock.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("aegis_queue_oldest_age_seconds", "Age of the oldest queued task.", value=age)
        backlog = OutboxMessage.objects.filter(sent_at__isnull=True).count()
        yield GaugeMetricFamily("aegis_outbox_backlog", "Server-to-agent messages not yet published.", value=backlog)

        yield from notification_backlog()

        roles = GaugeMetricFamily(
            "aegis_role_heartbeat_age_seconds", "Seconds since each role last reported.", labels=["role"]
        )
        for row in RoleHeartbeat.objects.values("role").annotate(latest=Min("beat_at")).order_by():
            newest = (
                RoleHeartbeat.objects.filter(role=row["role"])
                .order_by("-beat_at")
                .values_list("beat_at", flat=True)
                .first()
            )
            if newest is not None:
                roles.add_metric([row["role"]], (clock.now() - newest).total_seconds())
        yield roles

        pool = getattr(connection, "pool", None)
        if pool is not None:
            stats = pool.get_stats()
            yield GaugeMetricFamily(
                "aegis_db_pool_size", "Connections in this process's pool.", value=stats.get("pool_size", 0)
            )
            in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
            yield GaugeMetricFamily("aegis_db_pool_in_use", "Pool connections lent out.", value=in_use)

    def _machine(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "aegis_system_cpu_percent",
            "Machine CPU use since the last scrape.",
            value=psutil.cpu_percent(interval=None),
        )
        yield GaugeMetricFamily(
            "aegis_system_memory_percent", "Machine memory in use.", value=psutil.virtual_memory().percent
        )
        disk = data_dir_usage()
        if disk is not None:  # else the series is absent and the log says why
            yield GaugeMetricFamily(
                "aegis_disk_free_ratio", "Free space where DATA_DIR lives.", value=disk.free / disk.total
            )
