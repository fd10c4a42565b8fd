"""Job-level bookkeeping: counters, roll-up to a final state, the abort rule, and bulk cancel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from broker import outbox
from tasks import signals
from tasks.engine import history
from tasks.engine.lifecycle import save_tasks
from tasks.models import (
    HELD_STATES,
    OPEN_JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    Task,
    TaskEventKind,
    TaskState,
)

_COUNTER_OF_STATE = {
    TaskState.SUCCEEDED: "tasks_succeeded",
    TaskState.FAILED: "tasks_failed",
    TaskState.TIMED_OUT: "tasks_failed",
    TaskState.CANCELED: "tasks_canceled",
}


def count_terminal(states: Iterable[tuple[int, str]]) -> dict[int, Counter[str]]:
    """Per job, how many tasks entered each counter from ``(job_id, new_state)`` pairs."""
    per_job: dict[int, Counter[str]] = {}
    for job_id, state in states:
        counter = _COUNTER_OF_STATE.get(TaskState(state))
        if counter:
            per_job.setdefault(job_id, Counter())[counter] += 1
    return per_job


_COUNTERS = ("tasks_succeeded", "tasks_failed", "tasks_canceled")
_RETURNED = (
    "state",
    "tasks_total",
    *_COUNTERS,
    "continuous",
    "finished_at",
    "abort_failure_ratio",
    "abort_min_finished",
)


def record_terminal(per_job: dict[int, Counter[str]], now: datetime, closing: str | None = None) -> None:
    """Add finished tasks to their jobs' counters, then finish or abort the jobs that call for it.

    One ``UPDATE ... RETURNING`` per job: the row is locked only from here to the
    commit, so agents finishing tasks of one large job do not queue behind each other
    for the whole of their transactions. ``closing``: the state an operator is giving
    the job (``cancel_job``), so a job its last tasks finish here ends in that state,
    not in the one its counters would give (the ``job.finished`` event names it).
    """
    quote = connection.ops.quote_name
    for job_id in sorted(per_job):
        deltas = per_job[job_id]
        sets = ", ".join(f"{quote(name)} = {quote(name)} + %s" for name in _COUNTERS)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE jobs SET {sets}, updated_at = %s WHERE id = %s RETURNING {', '.join(_RETURNED)}",  # nosec B608  # identifiers from model metadata, quoted; values are parameters
                [*(deltas.get(name, 0) for name in _COUNTERS), now, job_id],
            )
            row = cursor.fetchone()
        job = Job(pk=job_id, **dict(zip(_RETURNED, _from_db(row), strict=True)))
        if closing is not None:
            job.state = closing
        if job.state in OPEN_JOB_STATES and exceeds_failure_threshold(job):
            abort(job, now)
        else:
            settle(job, now)


def _from_db(row: tuple[object, ...]) -> list[object]:
    """Convert the raw RETURNING values the way the ORM would (SQLite hands back text and ints)."""
    values = []
    for name, value in zip(_RETURNED, row, strict=True):
        field = Job._meta.get_field(name)
        column = field.get_col(Job._meta.db_table)  # type: ignore[union-attr]
        for converter in connection.ops.get_db_converters(column) + field.get_db_converters(connection):  # type: ignore[union-attr]
            value = converter(value, column, connection)
        values.append(value)
    return values


def settle(job: Job, now: datetime) -> None:
    """Give a job whose tasks all ended its final state (used where no counter changed).

    Every job's end passes here once (``finished_at`` is set only while empty): ``signals.job_finished``.
    """
    fields = _final_fields(job, now)
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields, updated_at=now)
        signals.job_finished.send(Job, job_id=job.pk, state=job.state, at=now)


def _final_fields(job: Job, now: datetime) -> dict[str, object]:
    """The state and finish time of a job whose tasks have all ended; nothing for one still going."""
    if job.continuous or job.finished_at is not None or job.tasks_finished < job.tasks_total:
        return {}
    if job.state in OPEN_JOB_STATES and exceeds_failure_threshold(job):
        return {}  # the abort decides
    job.finished_at = now
    if job.state in OPEN_JOB_STATES:
        if not job.tasks_total:
            job.state = JobState.EMPTY  # nothing ran: never "succeeded, 0 of 0"
        elif job.tasks_failed:
            job.state = JobState.FAILED
        elif job.tasks_succeeded:
            job.state = JobState.SUCCEEDED
        else:
            job.state = JobState.CANCELED
    return {"finished_at": job.finished_at, "state": job.state}


def exceeds_failure_threshold(job: Job) -> bool:
    if job.abort_failure_ratio is None:
        return False
    finished = job.tasks_succeeded + job.tasks_failed
    if finished < max(job.abort_min_finished, 1):
        return False
    return job.tasks_failed / finished > job.abort_failure_ratio


def abort(job: Job, now: datetime) -> None:
    """The failure threshold is crossed: the job is aborted (``signals.job_aborted``) and its open tasks canceled."""
    Job.objects.filter(pk=job.pk).update(state=JobState.ABORTED, updated_at=now)
    job.state = JobState.ABORTED
    signals.job_aborted.send(Job, job_id=job.pk, at=now)
    cancel_tasks(Task.objects.filter(job_id=job.pk), now, force=False, reason="job aborted: failure threshold")
    settle(Job.objects.get(pk=job.pk), now)


def mark_running(job_ids: Iterable[int], now: datetime) -> None:
    """Scheduled jobs among these start running; ``signals.job_started`` for each this statement moved.

    ``UPDATE ... RETURNING``: a job another claim started first (its row changed while
    this one waited for the lock) fails the state test again and is not returned.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE jobs SET state = %s, updated_at = %s WHERE id IN ({marks}) AND state = %s RETURNING id",  # nosec B608  # placeholders only
            [JobState.RUNNING.value, now, *ids, JobState.SCHEDULED.value],
        )
        started = sorted(row[0] for row in cursor.fetchall())
    tell_started(started, now)


def tell_started(job_ids: Iterable[int], now: datetime) -> None:
    """``signals.job_started`` for jobs this transaction moved from scheduled to running (here or in
    ``claim_pg``'s statement, which starts them in SQL and returns which)."""
    for job_id in job_ids:
        signals.job_started.send(Job, job_id=job_id, at=now)


FAILED_FINAL_STATES = (TaskState.FAILED, TaskState.TIMED_OUT)


def tell_failed(tasks: Iterable[Any], now: datetime) -> None:
    """``signals.task_failed`` for each task (a ``Task`` or a row with its attributes) that just ended failed.

    Called by every path that ends attempts (reports, expiry, reconcile, stuck) with the
    tasks it changed: a task still queued for its next attempt is not a final failure.
    """
    for task in tasks:
        if task.state in FAILED_FINAL_STATES:
            signals.task_failed.send(
                Task,
                task_id=task.pk,
                job_id=task.job_id,
                attempt=task.attempt,
                agent_id=task.agent_id,
                state=task.state,
                error=task.error,
                at=now,
            )


def cancel_tasks(
    tasks: QuerySet[Task], now: datetime, force: bool, reason: str, actor: str = "", closing: str | None = None
) -> int:
    """Cancel every open task of the given queryset.

    Queued tasks end at once. Held tasks get a cancel sent to their agent; with
    ``force`` they end at once too and a late result is fenced off, without it they
    end when the agent reports or their lease runs out. Returns how many ended now.
    ``closing``: see ``record_terminal``.
    """
    locked = list(
        tasks.filter(state__in=[TaskState.QUEUED, *HELD_STATES]).select_for_update(no_key=True).order_by("pk")
    )
    events, messages, ended = [], [], []
    for task in locked:
        previous = task.state
        if task.state in HELD_STATES and task.agent_id:
            if task.cancel_requested_at is None or force:
                messages.append(
                    outbox.to_inbox(
                        task.agent_id, "task.cancel", now, task_id=task.pk, attempt=task.attempt, force=force
                    )
                )
            if not force:
                if task.cancel_requested_at is None:
                    task.cancel_requested_at = now
                    task.updated_at = now
                    ended.append(task)
                    events.append(
                        history.event(
                            task.pk,
                            TaskEventKind.CANCEL_REQUESTED,
                            task.attempt,
                            now,
                            previous,
                            previous,
                            agent_id=task.agent_id,
                            data={"reason": reason, "by": actor},
                        )
                    )
                continue
        task.state = TaskState.CANCELED
        task.cancel_requested_at = task.cancel_requested_at or now
        task.lease_expires_at = None
        task.finished_at = now
        task.updated_at = now
        ended.append(task)
        events.append(
            history.event(
                task.pk,
                TaskEventKind.CANCELED,
                task.attempt,
                now,
                previous,
                TaskState.CANCELED,
                agent_id=task.agent_id,
                data={"reason": reason, "force": force, "by": actor},
            )
        )
    save_tasks(ended)
    history.write_events(events)
    outbox.write(messages)
    finished = [(task.job_id, task.state) for task in ended if task.state in TERMINAL_STATES]
    record_terminal(count_terminal(finished), now, closing)
    return len(finished)
