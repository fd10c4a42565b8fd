"""Retention: delete what is finished and older than a cutoff, in short batches.

Each batch is its own transaction (select a batch of ids, delete by id), so pruning
a large backlog never holds locks for long nor builds one huge transaction next to
the dispatcher's claims.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from aegis_site.core import clock
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from tasks import signals
from tasks.artifacts.actions import delete_for_tasks as delete_artifacts
from tasks.models import (
    TERMINAL_STATES,
    Job,
    JobState,
    Task,
    TaskArtifact,
    TaskEvent,
    TaskLogAttempt,
    TaskLogChunk,
)

DURATION_RE = re.compile(r"\A\s*(\d+)\s*([dhm])\s*\Z")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}
FINISHED_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.ABORTED, JobState.EMPTY)
DEFAULT_BATCH_SIZE = 1000


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``."""
    match = DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h or 90m)")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class PruneCounts:
    tasks: int = 0
    task_events: int = 0
    task_log_chunks: int = 0
    task_artifacts: int = 0
    jobs: int = 0
    audit_events: int = 0
    outbox_messages: int = 0
    others: dict[str, int] = field(default_factory=dict)  # what the ``pruning`` signal's receivers deleted


def prunable_tasks(cutoff: datetime) -> QuerySet[Task]:
    return Task.objects.filter(state__in=TERMINAL_STATES, finished_at__lt=cutoff)


def prunable_jobs(cutoff: datetime) -> QuerySet[Job]:
    """Finished jobs older than the cutoff none of whose tasks is left to keep."""
    kept_tasks = Task.objects.filter(job=OuterRef("pk")).exclude(Q(state__in=TERMINAL_STATES, finished_at__lt=cutoff))
    return Job.objects.filter(state__in=FINISHED_JOB_STATES, finished_at__lt=cutoff).filter(~Exists(kept_tasks))


def prunable_audit(cutoff: datetime) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(created_at__lt=cutoff)


def prunable_outbox(cutoff: datetime) -> QuerySet[OutboxMessage]:
    return OutboxMessage.objects.filter(sent_at__isnull=False, sent_at__lt=cutoff)


def prune(
    older_than: timedelta,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> PruneCounts:
    """Delete (or, with ``dry_run``, count) everything older than ``now - older_than``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = clock.now() - older_than
    counts = PruneCounts()
    if dry_run:
        tasks = prunable_tasks(cutoff)
        counts.tasks = tasks.count()
        counts.task_events = TaskEvent.objects.filter(task__in=tasks).count()
        counts.task_log_chunks = TaskLogChunk.objects.filter(task__in=tasks).count()
        counts.task_artifacts = TaskArtifact.objects.filter(task__in=tasks).count()
        counts.jobs = prunable_jobs(cutoff).count()
        counts.audit_events = prunable_audit(cutoff).count()
        counts.outbox_messages = prunable_outbox(cutoff).count()
        counts.others = _prune_others(cutoff, batch_size, dry_run=True)
        return counts

    def report(what: str, count: int) -> None:
        if progress is not None:
            progress(what, count)

    while ids := list(prunable_tasks(cutoff).order_by("id").values_list("id", flat=True)[:batch_size]):
        with transaction.atomic():
            deleted_events, _ = TaskEvent.objects.filter(task_id__in=ids).delete()
            # One DELETE each (nothing refers to these rows: Django deletes them without loading them),
            # by the leading column of their unique indexes; the tasks' cascade then finds nothing left.
            deleted_chunks, _ = TaskLogChunk.objects.filter(task_id__in=ids).delete()
            TaskLogAttempt.objects.filter(task_id__in=ids).delete()
            # Artifacts: their objects in the store first, then their rows (tasks.artifacts.actions).
            deleted_artifacts = delete_artifacts(ids)
            deleted_tasks, _ = Task.objects.filter(id__in=ids).delete()
        counts.task_events += deleted_events
        counts.task_log_chunks += deleted_chunks
        counts.task_artifacts += deleted_artifacts
        counts.tasks += deleted_tasks
        report("tasks", counts.tasks)
    counts.jobs = _delete_in_batches(lambda: prunable_jobs(cutoff), Job.objects.all(), batch_size)
    report("jobs", counts.jobs)
    counts.audit_events = _delete_in_batches(lambda: prunable_audit(cutoff), AuditEvent.objects.all(), batch_size)
    report("audit events", counts.audit_events)
    counts.outbox_messages = _delete_in_batches(
        lambda: prunable_outbox(cutoff), OutboxMessage.objects.all(), batch_size
    )
    report("outbox messages", counts.outbox_messages)
    counts.others = _prune_others(cutoff, batch_size, dry_run=False)
    for what, count in counts.others.items():
        report(what, count)
    return counts


def _prune_others(cutoff: datetime, batch_size: int, dry_run: bool) -> dict[str, int]:
    """The apps above prune their own rows (``signals.pruning``): notifications, so far."""
    others: dict[str, int] = {}
    answers = signals.pruning.send(PruneCounts, cutoff=cutoff, batch_size=batch_size, dry_run=dry_run)
    for _receiver, answer in answers:
        counted: dict[str, int] = answer if isinstance(answer, dict) else {}
        for what, count in counted.items():
            others[what] = others.get(what, 0) + count
    return others


def _delete_in_batches(candidates: Callable[[], QuerySet[Any]], table: QuerySet[Any], batch_size: int) -> int:
    deleted = 0
    while ids := list(candidates().order_by("id").values_list("id", flat=True)[:batch_size]):
        with transaction.atomic():
            # Jobs: their tasks are gone, so this deletes the job rows only.
            count, _ = table.filter(id__in=ids).delete()
        deleted += count
    return deleted
