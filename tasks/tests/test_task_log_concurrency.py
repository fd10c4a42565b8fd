"""Two bridge replicas writing output of the same attempt at once (shared subscriptions split an agent's
messages between them): the second waits for the first's summary lock, then sees its chunks, so the cap
and the duplicate check stay exact. And a batch of output locks no agent row and no task row.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from aegis_site.core import clock
from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer
from tasks import actions
from tasks.engine import logs
from tasks.engine.logs import Caps, Chunk
from tasks.engine.reports import Report
from tasks.models import Task, TaskLogAttempt, TaskLogChunk
from tests.support import envelope, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def task(make_agent, spec, operator) -> Task:
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    return Task.objects.get(pk=assignment.task_id)


def _someone_waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


def test_a_second_replica_waits_for_the_first_and_sees_its_chunks(task):
    caps = Caps(per_attempt=10, per_task=1000)
    first_wrote, first_may_commit = threading.Event(), threading.Event()
    results: dict[str, list[logs.ChunkStatus]] = {}
    # The summary row exists, committed: the second replica meets the first's uncommitted update of it.
    assert actions.store_task_output([Chunk("a1", task.pk, 1, 1, "stdout", b"ab")]) == ["stored"]

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = logs.store_chunks(
                    [Chunk("a1", task.pk, 1, seq, "stdout", b"abc") for seq in (2, 3)], clock.now(), caps
                )
                first_wrote.set()
                assert first_may_commit.wait(15)
        finally:
            connections.close_all()

    def second() -> None:
        try:
            with transaction.atomic():
                results["second"] = logs.store_chunks(
                    [Chunk("a1", task.pk, 1, seq, "stdout", b"abcd") for seq in (3, 4, 5)], clock.now(), caps
                )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_wrote.wait(15)
    threads[1].start()
    wait_for(_someone_waits_for_a_lock, "the second replica waiting for the first one's summary lock")
    first_may_commit.set()
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive()

    assert results == {"first": ["stored", "stored"], "second": ["duplicate_seq", "truncated", "over_cap"]}
    rows = list(TaskLogChunk.objects.filter(task=task).order_by("seq").values_list("seq", "stream"))
    assert rows == [(1, "stdout"), (2, "stdout"), (3, "stdout"), (4, "system")]
    summary = TaskLogAttempt.objects.get(task=task, attempt=1)
    assert (summary.chunks, summary.max_seq, summary.truncated_at, summary.dropped) == (4, 4, 8, 1)


def test_a_batch_of_output_locks_no_agent_and_no_task(task):
    batch = [
        Incoming(
            "aegis/agents/a1/logs",
            envelope("task.log", task_id=task.pk, attempt=1, seq=seq, stream="stdout", data="x"),
        )
        for seq in (1, 2, 3)
    ]
    with CaptureQueriesContext(connection) as queries:
        assert ingest(batch, HeartbeatBuffer()) == 3
    locking = [q["sql"] for q in queries if "FOR UPDATE" in q["sql"] or "FOR NO KEY UPDATE" in q["sql"]]
    assert locking, "the summaries are locked"
    assert all('FROM "task_log_attempts"' in sql for sql in locking), locking


def test_output_is_compressed_with_lz4_and_stored_byte_for_byte_through_binary_parameters(task):
    """Migration 0010 (where the server has lz4) and the binary INSERT: raw bytes, NUL and all, come back equal."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        (has_lz4,) = cursor.fetchone()
        cursor.execute(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'task_log_chunks'::regclass AND attname = 'data'"
        )
        (compression,) = cursor.fetchone()
    assert compression == ("l" if has_lz4 else "")
    data = bytes(range(256)) * 64  # 16 KiB of every byte value
    with transaction.atomic():
        statuses = logs.store_chunks([Chunk("a1", task.pk, 1, 1, "stdout", data)], clock.now(), Caps(1 << 30, 1 << 30))
    assert statuses == ["stored"]
    assert bytes(TaskLogChunk.objects.get(task=task, seq=1).data) == data


def test_a_task_locked_by_a_report_does_not_hold_up_the_commit_of_its_output(task):
    """Output rows reference the task; PostgreSQL checks that at COMMIT with FOR KEY SHARE on the task row.

    Engine locks on tasks and jobs are FOR NO KEY UPDATE, which FOR KEY SHARE passes: under FOR UPDATE the
    commit below waited for the other transaction, and two bridge replicas deadlocked (docs/queue.md).
    """
    with CaptureQueriesContext(connection) as queries:
        actions.report("a1", Report("succeeded", task.pk, 1, message_id=uuid.uuid4().hex, result={}))
    locks = [
        q["sql"] for q in queries if " FOR " in q["sql"] and ('FROM "tasks"' in q["sql"] or 'FROM "jobs"' in q["sql"])
    ]
    assert locks, "the report locks its task"
    assert all("FOR NO KEY UPDATE" in sql for sql in locks), locks

    locked, release = threading.Event(), threading.Event()

    def hold_the_task() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update(no_key=True).get(pk=task.pk)  # as the engine's reports lock it
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_task)
    holder.start()
    try:
        assert locked.wait(30)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '10s'")  # a wait here fails the test instead of hanging it
            logs.store_chunks(
                [Chunk("a1", task.pk, 1, 1, "stdout", b"late line\n")], clock.now(), Caps(1 << 30, 1 << 30)
            )
        assert TaskLogChunk.objects.filter(task=task).count() == 1
    finally:
        release.set()
        holder.join(30)
