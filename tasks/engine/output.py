"""Reading a task's output (``task_log_chunks``) by cursor: the chunks after a ``seq``, in order, one attempt at a time.

The cursor is the last ``seq`` read: a reader asks again with ``after_seq`` set to it and gets
what arrived since, so nothing is read twice and nothing is skipped. A page stops before a young
gap (``in_order``): a chunk a bridge replica or a resend has not stored yet is read in its place
once it is, not skipped by a cursor that went past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aegis_site.core import clock
from aegis_site.core.errors import NotFound
from tasks.models import Task, TaskLogAttempt, TaskLogChunk

GAP_WAIT = timedelta(seconds=5)  # how long a reader waits at a gap for the chunk a bridge replica is still writing


@dataclass(frozen=True, slots=True)
class OutputChunk:
    seq: int
    stream: str
    data: bytes


@dataclass(frozen=True, slots=True)
class OutputPage:
    task_id: int
    attempt: int
    attempts: list[int]  # the attempts that have output, oldest first
    chunks: list[OutputChunk]
    after_seq: int  # the cursor for the next read: the last seq returned, or the one asked for
    max_seq: int  # the highest seq stored for this attempt
    missing: int  # chunks below max_seq not (yet) stored: a gap a resend may fill
    truncated_at: int | None  # set once a cap stopped the output (a system chunk says so)
    dropped: int  # chunks refused after the truncation
    state: str  # the task's state: a reader following a finished task can stop once it has read max_seq
    more: bool = field(default=False)  # more chunks than ``limit`` were waiting


def in_order(rows: list[Any], after_seq: int, now: datetime) -> list[Any]:
    """The rows up to the first gap, unless the chunk after the gap has waited ``GAP_WAIT`` already.

    Bridge replicas share the subscriptions, so an agent's chunks are stored by several
    transactions and ``seq`` 10 can be committed before ``seq`` 9. A reader whose cursor passed 10
    would never read 9: so a page stops before a gap while the gap is young, and the next read
    (a follower is woken by the commit that fills it) goes on from there. A gap that is still
    open after ``GAP_WAIT`` is a chunk lost or not yet resent; the reader steps over it (the
    summary's ``missing`` says so) rather than wait for it forever.
    """
    expected = after_seq + 1
    for index, (seq, _stream, _data, received_at) in enumerate(rows):
        if seq != expected and now - received_at < GAP_WAIT:
            return rows[:index]
        expected = seq + 1
    return rows


def read_output(task_id: int, attempt: int | None, after_seq: int, limit: int) -> OutputPage:
    """Up to ``limit`` chunks of ``attempt`` (default: the task's current one) with ``seq > after_seq``."""
    task = Task.objects.filter(pk=task_id).only("id", "attempt", "state").first()
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    summaries = {row.attempt: row for row in TaskLogAttempt.objects.filter(task_id=task_id).order_by("attempt")}
    wanted = attempt if attempt is not None else task.attempt
    rows = list(
        TaskLogChunk.objects.filter(task_id=task_id, attempt=wanted, seq__gt=after_seq)
        .order_by("seq")
        .values_list("seq", "stream", "data", "received_at")[: limit + 1]
    )
    rows = in_order(rows, after_seq, clock.now())
    chunks = [OutputChunk(seq, stream, bytes(data)) for seq, stream, data, _at in rows[:limit]]
    summary = summaries.get(wanted)
    return OutputPage(
        task_id=task_id,
        attempt=wanted,
        attempts=sorted(summaries),
        chunks=chunks,
        after_seq=chunks[-1].seq if chunks else after_seq,
        max_seq=summary.max_seq if summary else 0,
        missing=(summary.max_seq - summary.chunks) if summary else 0,
        truncated_at=summary.truncated_at if summary else None,
        dropped=summary.dropped if summary else 0,
        state=task.state,
        more=len(rows) > limit,
    )
