"""Events no transaction causes, found by looking: certificates about to expire, tasks stuck in reconciliation.

The notifier calls ``scan(now)`` every 60 s. Each finding is keyed so it is emitted once
however many scans (or notifier replicas) see it: a certificate by its serial, a stuck
task by its attempt. Each emit runs in a transaction of its own.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from notify.models import Event, EventType
from notify.outbox import emit, rfc3339
from registry.models import Agent
from registry.pki.expiry import CertReport, expiring, expiry_report
from registry.pki.layout import CaLayout
from tasks.engine.stuck import GROUPS, HANDLING_GRACE
from tasks.models import Task

log = logging.getLogger("aegis.notify")

STUCK_SCAN_LIMIT = 2000  # tasks examined per group and scan; the oldest first, so none waits forever


def scan(now: datetime) -> int:
    """Emit the ``certificate.expiring`` and ``reconciliation.stuck`` events found now. Returns how many are new."""
    return scan_certificates(now) + scan_stuck(now)


def scan_certificates(now: datetime, layout: CaLayout | None = None) -> int:
    """``certificate.expiring`` for each active certificate with fewer than NOTIFY_CERT_EXPIRY_WARN_DAYS days left."""
    if layout is None:
        if not settings.BROKER_DIR:
            return 0
        layout = CaLayout(Path(settings.BROKER_DIR))
    if not layout.ca_cert.exists():
        return 0
    try:
        reports = expiring(expiry_report(layout, now=now), settings.NOTIFY_CERT_EXPIRY_WARN_DAYS)
    except OSError:  # a broker directory being rewritten: the next scan reads it again
        log.warning("certificate scan: the broker directory could not be read", exc_info=True)
        return 0
    found = [report for report in reports if report.serial]  # the CRL's next update has no serial
    known = _known_keys([_certificate_key(report) for report in found])
    emitted = 0
    for report in found:
        if _certificate_key(report) not in known:
            emitted += _emit_certificate(report, now)
    return emitted


def _certificate_key(report: CertReport) -> str:
    return f"certificate.expiring:{report.serial}"


def _emit_certificate(report: CertReport, now: datetime) -> int:
    agent_id = report.common_name if report.role == "agent" else None
    data = {
        "certificate": {
            "role": report.role,
            "common_name": report.common_name,
            "agent_id": agent_id,
            "serial": report.serial,
            "issuer": report.issuer,
            "not_after": rfc3339(report.not_after),
            "days_left": report.days_left,
        }
    }
    with transaction.atomic():
        labels = None
        if agent_id is not None:
            labels = Agent.objects.filter(pk=agent_id).values_list("labels", flat=True).first() or {}
        event = emit(EventType.CERTIFICATE_EXPIRING, _certificate_key(report), data, now, agent_labels=labels)
    return 1 if event is not None else 0


def scan_stuck(now: datetime) -> int:
    """``reconciliation.stuck`` for each task attempt in the reconciliation view for NOTIFY_STUCK_AFTER_S or more.

    How long a task has been there: since its lease ran out (plus the handling grace the
    view allows) for the lease groups; since its agent was last heard of for a task held
    by an offline agent.
    """
    after = timedelta(seconds=settings.NOTIFY_STUCK_AFTER_S)
    emitted = 0
    for group in GROUPS:
        tasks = group.tasks(now).select_related("job", "agent")
        if group.code == "offline_agent":
            tasks = tasks.filter(agent__last_seen_at__lte=now - after)
        else:
            tasks = tasks.filter(lease_expires_at__lte=now - after - HANDLING_GRACE)
        found = list(tasks[:STUCK_SCAN_LIMIT])
        known = _known_keys([_stuck_key(task) for task in found])
        for task in found:
            if _stuck_key(task) not in known:
                emitted += _emit_stuck(group.code, group.title, task, now)
    return emitted


def _stuck_key(task: Task) -> str:
    return f"reconciliation.stuck:{task.pk}:{task.attempt}"


def _emit_stuck(code: str, title: str, task: Task, now: datetime) -> int:
    agent = task.agent
    since = agent.last_seen_at if code == "offline_agent" and agent is not None else None
    if since is None and task.lease_expires_at is not None:
        since = task.lease_expires_at
    data: dict[str, Any] = {
        "reason": code,
        "title": title,
        "since": rfc3339(since) if since is not None else None,
        "task": {
            "id": task.pk,
            "attempt": task.attempt,
            "state": task.state,
            "agent_id": task.agent_id,
            "lease_expires_at": rfc3339(task.lease_expires_at) if task.lease_expires_at else None,
        },
        "job": {"id": task.job_id, "kind": task.job.kind},
    }
    with transaction.atomic():
        event = emit(
            EventType.RECONCILIATION_STUCK,
            _stuck_key(task),
            data,
            now,
            job_id=task.job_id,
            job_kind=task.job.kind,
            agent_labels=(agent.labels or {}) if agent is not None else {},
        )
    return 1 if event is not None else 0


def _known_keys(keys: list[str]) -> set[str]:
    """The keys among these that have their event already: one query, so a repeated scan writes nothing."""
    return set(Event.objects.filter(key__in=keys).values_list("key", flat=True)) if keys else set()
