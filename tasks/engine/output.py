"""Reading a task's output (``task_log_chunks``) by cursor: the chunks after a ``seq``, in order, one attempt at a time.

The cursor is the last ``seq`` read: a reader asks again with ``after_seq`` set to it and gets
what arrived since, so nothing is read twice and nothing is skipped, even when a gap is filled
later by a resend (the chunk appears at its ``seq``, after which the reader has not yet gone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegis_site.core.errors import NotFound
from tasks.models import Task, TaskLogAttempt, TaskLogChunk


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
        .values_list("seq", "stream", "data")[: limit + 1]
    )
    chunks = [OutputChunk(seq, stream, bytes(data)) for seq, stream, data in rows[:limit]]
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
