"""Storing task output (``task.log`` chunks), set-based, in the bridge's batch transaction.

Fence: a chunk is kept when its task exists, the chunk's attempt is the task's current one, in
any state (a late chunk of the current attempt, arriving after its result on the other topic, is
kept), and the sending agent holds the task or, when the task no longer names it, was the one that
attempt was assigned to (a failed attempt waiting for its retry no longer names an agent, and its
output is what the operator wants to read). Otherwise it is dropped with a reason.

Caps (``TASK_LOG_MAX_BYTES_PER_ATTEMPT``, ``TASK_LOG_MAX_BYTES_PER_TASK``): the first chunk
that would take its attempt or its task over a cap is replaced, at its ``seq``, by a ``system``
chunk saying where and why the output was cut, and the attempt's ``truncated_at`` is set; every
later chunk of that attempt only counts in ``dropped``. Never a silent cut.

Concurrency: bridge replicas share the subscriptions, so chunks of one attempt may arrive in two
transactions at once. Each batch locks the summary rows (``task_log_attempts``) of the attempts
it writes, in (task, attempt) order, before it reads what is stored: the byte counts and the
duplicate check see every committed chunk. No agent row and no task row is locked.

Followers (the API's ``?follow=``, the admin's live tail) are woken by a NOTIFY naming the tasks
that got chunks, sent in the same transaction, so delivered at its commit (``output_waits``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Q, Sum

from aegis_site.core import counters
from tasks.engine import output_waits
from tasks.engine.history import update_each
from tasks.models import LogStream, Task, TaskEvent, TaskEventKind, TaskLogAttempt, TaskLogChunk

ChunkStatus = Literal[
    "stored", "truncated", "over_cap", "duplicate_seq", "stale_attempt", "not_your_task", "unknown_task"
]
# Statuses of a chunk that was not stored as sent (``truncated``: the marker took its place).
DROPPED_STATUSES = frozenset({"over_cap", "duplicate_seq", "stale_attempt", "not_your_task", "unknown_task"})
ATTEMPT_CAP, TASK_CAP = "TASK_LOG_MAX_BYTES_PER_ATTEMPT", "TASK_LOG_MAX_BYTES_PER_TASK"


@dataclass(frozen=True, slots=True)
class Chunk:
    agent_id: str  # who sent it (the topic's agent)
    task_id: int
    attempt: int
    seq: int
    stream: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Caps:
    per_attempt: int
    per_task: int


def truncation_marker(at: int, setting: str) -> bytes:
    return f"[aegis] output truncated at {at} bytes ({setting})\n".encode()


@dataclass(slots=True)
class _Summary:
    id: int
    bytes: int
    chunks: int
    max_seq: int
    truncated_at: int | None
    dropped: int
    changed: bool = False


def store_chunks(chunks: Sequence[Chunk], now: datetime, caps: Caps) -> list[ChunkStatus]:
    """Fence, deduplicate, cap and store ``chunks``; returns what became of each, in order. Call in a transaction."""
    statuses: list[ChunkStatus | None] = [None] * len(chunks)
    if not chunks:
        return []
    holders = {
        task_id: (agent_id, attempt)
        for task_id, agent_id, attempt in Task.objects.filter(id__in={c.task_id for c in chunks}).values_list(
            "id", "agent_id", "attempt"
        )
    }
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)  # (task, attempt) -> indexes of fenced chunks
    released: list[int] = []  # current attempt, but the task names no agent or another one
    for index, chunk in enumerate(chunks):
        holder = holders.get(chunk.task_id)
        if holder is None:
            statuses[index] = "unknown_task"
        elif holder[1] != chunk.attempt:
            statuses[index] = "stale_attempt"
        elif holder[0] != chunk.agent_id:
            released.append(index)
        else:
            groups[(chunk.task_id, chunk.attempt)].append(index)
    if released:
        assigned_to = _assignees({(chunks[i].task_id, chunks[i].attempt) for i in released})
        for index in released:
            chunk = chunks[index]
            if assigned_to.get((chunk.task_id, chunk.attempt)) == chunk.agent_id:
                groups[(chunk.task_id, chunk.attempt)].append(index)
            else:
                statuses[index] = "not_your_task"
    if groups:
        summaries = _lock_summaries(sorted(groups))
        stored = _stored_seqs(groups, chunks)
        earlier = _bytes_of_other_attempts(groups)
        rows: list[tuple[int, int, int, str, bytes, datetime]] = []
        for key in sorted(groups):
            task_id, attempt = key
            summary = summaries[key]
            seen = stored[key]
            for index in sorted(groups[key], key=lambda i: chunks[i].seq):
                chunk = chunks[index]
                if chunk.seq in seen:
                    statuses[index] = "duplicate_seq"
                    continue
                seen.add(chunk.seq)
                summary.changed = True
                if summary.truncated_at is not None:
                    summary.dropped += 1
                    statuses[index] = "over_cap"
                    continue
                stream, data = chunk.stream, chunk.data
                task_bytes = earlier.get(task_id, 0) + summary.bytes
                if summary.bytes + len(data) > caps.per_attempt or task_bytes + len(data) > caps.per_task:
                    over_attempt = summary.bytes + len(data) > caps.per_attempt
                    at, setting = (summary.bytes, ATTEMPT_CAP) if over_attempt else (task_bytes, TASK_CAP)
                    summary.truncated_at = summary.bytes
                    stream, data = LogStream.SYSTEM.value, truncation_marker(at, setting)
                    statuses[index] = "truncated"
                else:
                    statuses[index] = "stored"
                if chunk.seq > summary.max_seq + 1:
                    counters.TASK_LOG_GAPS.inc()
                summary.max_seq = max(summary.max_seq, chunk.seq)
                summary.chunks += 1
                summary.bytes += len(data)
                rows.append((task_id, attempt, chunk.seq, stream, data, now))
        _insert_chunks(rows)
        if rows:
            output_waits.notify_on_commit({row[0] for row in rows})
        update_each(
            TaskLogAttempt,
            ("bytes", "chunks", "max_seq", "truncated_at", "dropped"),
            [(s.id, s.bytes, s.chunks, s.max_seq, s.truncated_at, s.dropped) for s in summaries.values() if s.changed],
        )
        counters.TASK_LOG_CHUNKS.inc(len(rows))
        counters.TASK_LOG_BYTES.inc(sum(len(row[4]) for row in rows))
    return [status or "unknown_task" for status in statuses]


def _assignees(keys: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """The agent each (task, attempt) was assigned to, from the history's ``assigned`` events."""
    wanted = Q()
    for task_id, attempts in _by_task(sorted(keys)).items():
        wanted |= Q(task_id=task_id, attempt__in=attempts)
    rows = TaskEvent.objects.filter(wanted, kind=TaskEventKind.ASSIGNED).values_list("task_id", "attempt", "agent_id")
    return {(task_id, attempt): agent_id for task_id, attempt, agent_id in rows}


def _lock_summaries(keys: list[tuple[int, int]]) -> dict[tuple[int, int], _Summary]:
    """Create the missing summary rows, then lock them all in (task, attempt) order."""
    TaskLogAttempt.objects.bulk_create(
        [TaskLogAttempt(task_id=task_id, attempt=attempt) for task_id, attempt in keys], ignore_conflicts=True
    )
    wanted = Q()
    for task_id, attempts in _by_task(keys).items():
        wanted |= Q(task_id=task_id, attempt__in=attempts)
    rows = (
        TaskLogAttempt.objects.select_for_update()
        .filter(wanted)
        .order_by("task_id", "attempt")
        .values_list("task_id", "attempt", "id", "bytes", "chunks", "max_seq", "truncated_at", "dropped")
    )
    return {(row[0], row[1]): _Summary(*row[2:]) for row in rows}


def _stored_seqs(groups: dict[tuple[int, int], list[int]], chunks: Sequence[Chunk]) -> dict[tuple[int, int], set[int]]:
    wanted = Q()
    for (task_id, attempt), indexes in groups.items():
        wanted |= Q(task_id=task_id, attempt=attempt, seq__in=[chunks[i].seq for i in indexes])
    stored: dict[tuple[int, int], set[int]] = {key: set() for key in groups}
    for task_id, attempt, seq in TaskLogChunk.objects.filter(wanted).values_list("task_id", "attempt", "seq"):
        stored[(task_id, attempt)].add(seq)
    return stored


def _bytes_of_other_attempts(groups: dict[tuple[int, int], list[int]]) -> dict[int, int]:
    """Output bytes the tasks' earlier attempts stored (they take no more: the fence refuses them)."""
    other = Q()
    for task_id, attempts in _by_task(list(groups)).items():
        other |= Q(task_id=task_id) & ~Q(attempt__in=attempts)
    totals = TaskLogAttempt.objects.filter(other).values("task_id").annotate(total=Sum("bytes"))
    return {row["task_id"]: row["total"] or 0 for row in totals}


def _by_task(keys: list[tuple[int, int]]) -> dict[int, list[int]]:
    attempts: dict[int, list[int]] = defaultdict(list)
    for task_id, attempt in keys:
        attempts[task_id].append(attempt)
    return attempts


def _insert_chunks(rows: list[tuple[int, int, int, str, bytes, datetime]]) -> None:
    """One INSERT of every row: ``unnest()`` arrays on PostgreSQL; the ORM elsewhere."""
    if not rows:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "postgresql":
        TaskLogChunk.objects.bulk_create(
            [
                TaskLogChunk(task_id=t, attempt=a, seq=s, stream=stream, data=data, received_at=at)
                for t, a, s, stream, data, at in rows
            ],
            ignore_conflicts=True,
        )
        return
    columns = list(zip(*rows, strict=True))
    at = rows[0][5]  # one batch, one time
    connection.ensure_connection()
    # psycopg's own cursor, binary parameters (%b): Django's cursor binds on the client, which spells
    # every byte of output as hex inside the SQL text for PostgreSQL to parse back (a quarter of the
    # bridge's time on a stream of output, bench/task_logs.py). Same connection, same transaction.
    started = time.perf_counter()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        # The summaries' locks make a conflict impossible; DO NOTHING keeps a bug from failing the batch.
        cursor.execute(
            "INSERT INTO task_log_chunks (task_id, attempt, seq, stream, data, received_at) "
            "SELECT v.task_id, v.attempt, v.seq, v.stream, v.data, %b::timestamptz "
            "FROM unnest(%b::bigint[], %b::smallint[], %b::bigint[], %b::varchar[], %b::bytea[]) "
            "AS v(task_id, attempt, seq, stream, data) "
            "ON CONFLICT (task_id, attempt, seq) DO NOTHING",
            [at, list(columns[0]), list(columns[1]), list(columns[2]), list(columns[3]), list(columns[4])],
        )
    counters.DB_QUERY_DURATION.observe(time.perf_counter() - started)  # Django's cursors time themselves
