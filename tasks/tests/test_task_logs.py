"""Task output (``task.log``): fenced by attempt, deduplicated by seq, capped with a marker, gaps counted.

Runs on SQLite and on PostgreSQL (where the chunks go in through one ``unnest()`` INSERT).
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aegis_site.core import clock, counters
from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer
from tasks import actions, retention
from tasks.engine.logs import Chunk
from tasks.models import Task, TaskLogAttempt, TaskLogChunk

pytestmark = pytest.mark.django_db


def publish(
    agent_id: str, task: Task, seq: int, data: bytes, stream: str = "stdout", attempt: int | None = None
) -> Incoming:
    document: dict[str, Any] = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "ts": "2024-05-01T12:00:00Z",
        "type": "task.log",
        "task_id": task.pk,
        "attempt": task.attempt if attempt is None else attempt,
        "seq": seq,
        "stream": stream,
    }
    try:
        document["data"] = data.decode()
        if "\0" in document["data"]:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL")
    except UnicodeDecodeError:
        document |= {"data": base64.b64encode(data).decode(), "encoding": "base64"}
    return Incoming(f"aegis/agents/{agent_id}/logs", json.dumps(document).encode())


def feed(*items: Incoming) -> int:
    return ingest(list(items), HeartbeatBuffer())


def output(task: Task, attempt: int | None = None) -> list[tuple[int, str, bytes]]:
    rows = TaskLogChunk.objects.filter(task=task, attempt=task.attempt if attempt is None else attempt)
    return [
        (seq, stream, bytes(data)) for seq, stream, data in rows.order_by("seq").values_list("seq", "stream", "data")
    ]


def summary(task: Task, attempt: int | None = None) -> TaskLogAttempt:
    return TaskLogAttempt.objects.get(task=task, attempt=task.attempt if attempt is None else attempt)


def dropped(reason: str) -> float:
    return counters.MQTT_DROPPED.labels(reason)._value.get()


@pytest.fixture
def running(make_agent, spec, operator) -> Task:
    """A task of a1, assigned (attempt 1)."""
    make_agent("a1")
    make_agent("a2")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    task = Task.objects.get(pk=assignment.task_id)
    assert (task.agent_id, task.attempt) == ("a1", 1)
    return task


def test_chunks_are_stored_in_seq_order_with_their_streams_and_summarised(running):
    feed(publish("a1", running, 2, b"two\n", "stderr"), publish("a1", running, 1, b"one\n"))
    feed(publish("a1", running, 3, b"three\n", "system"))
    assert output(running) == [(1, "stdout", b"one\n"), (2, "stderr", b"two\n"), (3, "system", b"three\n")]
    s = summary(running)
    assert (s.bytes, s.chunks, s.max_seq, s.truncated_at, s.dropped) == (14, 3, 3, None, 0)


def test_base64_bytes_are_stored_exactly(running):
    raw = bytes(range(256)) * 64
    feed(publish("a1", running, 1, raw), publish("a1", running, 2, b"\xff\x00tail"))
    assert output(running) == [(1, "stdout", raw), (2, "stdout", b"\xff\x00tail")]


def test_a_stale_attempt_is_refused(running, frozen_clock):
    before = dropped("stale_attempt")
    feed(publish("a1", running, 1, b"old", attempt=0), publish("a1", running, 1, b"future", attempt=2))
    assert output(running, 0) == output(running, 2) == []
    assert dropped("stale_attempt") == before + 2
    assert not TaskLogAttempt.objects.exists()


def test_another_agents_task_and_an_unknown_task_are_refused(running):
    before = (dropped("not_your_task"), dropped("unknown_task"))
    feed(publish("a2", running, 1, b"not mine"))
    ghost = Task(pk=running.pk + 1000, attempt=1)
    feed(publish("a1", ghost, 1, b"nobody"))
    assert TaskLogChunk.objects.count() == 0
    assert (dropped("not_your_task"), dropped("unknown_task")) == (before[0] + 1, before[1] + 1)


def test_a_duplicate_seq_is_dropped_and_counted_never_an_error(running):
    before = dropped("duplicate_seq")
    feed(publish("a1", running, 1, b"first"), publish("a1", running, 1, b"again in the batch"))
    feed(publish("a1", running, 1, b"resent later"), publish("a1", running, 2, b"next"))
    assert output(running) == [(1, "stdout", b"first"), (2, "stdout", b"next")]
    assert dropped("duplicate_seq") == before + 2
    assert summary(running).chunks == 2


def test_a_late_chunk_of_the_current_attempt_is_kept_after_success(running):
    actions.report("a1", actions.reports.Report("succeeded", running.pk, 1, message_id="done", result=None))
    running.refresh_from_db()
    assert running.state == "succeeded"
    feed(publish("a1", running, 1, b"late but mine"))
    assert output(running) == [(1, "stdout", b"late but mine")]


def test_the_attempt_cap_ends_the_output_with_exactly_one_marker_and_counts_the_rest(running, settings):
    settings.TASK_LOG_MAX_BYTES_PER_ATTEMPT = 10
    before = dropped("over_cap")
    feed(*(publish("a1", running, seq, b"abcd") for seq in (1, 2, 3, 4)))
    feed(publish("a1", running, 5, b"x"), publish("a1", running, 3, b"dup"))
    marker = b"[aegis] output truncated at 8 bytes (TASK_LOG_MAX_BYTES_PER_ATTEMPT)\n"
    assert output(running) == [(1, "stdout", b"abcd"), (2, "stdout", b"abcd"), (3, "system", marker)]
    s = summary(running)
    assert (s.truncated_at, s.dropped, s.chunks, s.max_seq) == (8, 2, 3, 3)
    assert dropped("over_cap") == before + 2


def test_the_task_cap_counts_every_attempt(running, settings, frozen_clock):
    settings.TASK_LOG_MAX_BYTES_PER_TASK = 10
    feed(publish("a1", running, 1, b"123456"))
    Task.objects.filter(pk=running.pk).update(attempt=2)  # a retry gave the task to a1 again
    running.refresh_from_db()
    feed(publish("a1", running, 1, b"1234"), publish("a1", running, 2, b"5"), publish("a1", running, 3, b"6"))
    marker = b"[aegis] output truncated at 10 bytes (TASK_LOG_MAX_BYTES_PER_TASK)\n"
    assert output(running) == [(1, "stdout", b"1234"), (2, "system", marker)]
    assert (summary(running).truncated_at, summary(running).dropped) == (4, 1)
    assert summary(running, 1).truncated_at is None


def test_a_gap_is_counted_and_a_resend_fills_it(running):
    before = counters.TASK_LOG_GAPS._value.get()
    feed(publish("a1", running, 1, b"a"), publish("a1", running, 4, b"d"))
    s = summary(running)
    assert (s.max_seq - s.chunks, counters.TASK_LOG_GAPS._value.get()) == (2, before + 1)
    feed(publish("a1", running, 2, b"b"), publish("a1", running, 3, b"c"))
    s = summary(running)
    assert (s.max_seq - s.chunks, counters.TASK_LOG_GAPS._value.get()) == (0, before + 1)
    assert b"".join(data for _, _, data in output(running)) == b"abcd"


def test_one_batch_of_many_agents_is_one_engine_call_with_a_bounded_number_of_queries(
    running, make_agent, spec, operator
):
    make_agent("a3")
    actions.submit_job(spec(target_agent_ids=["a3"]), operator)
    (other,) = actions.claim_tasks("a3", 10)
    other_task = Task.objects.get(pk=other.task_id)
    batch = [publish("a1", running, seq, b"x" * seq) for seq in range(1, 101)]
    batch += [publish("a3", other_task, seq, b"y") for seq in range(1, 101)]
    with CaptureQueriesContext(connection) as queries:
        feed(*batch)
    assert TaskLogChunk.objects.count() == 200
    assert len(queries) <= 12, [q["sql"][:120] for q in queries]


def test_the_engine_says_what_became_of_each_chunk(running):
    chunks = [
        Chunk("a1", running.pk, 1, 1, "stdout", b"x"),
        Chunk("a1", running.pk, 1, 1, "stdout", b"x"),
        Chunk("a2", running.pk, 1, 2, "stdout", b"x"),
        Chunk("a1", running.pk, 0, 2, "stdout", b"x"),
        Chunk("a1", running.pk + 1000, 1, 1, "stdout", b"x"),
    ]
    assert actions.store_task_output(chunks) == [
        "stored",
        "duplicate_seq",
        "not_your_task",
        "stale_attempt",
        "unknown_task",
    ]


def test_prune_deletes_the_output_of_the_tasks_it_prunes_in_batches_and_keeps_the_rest(
    running, make_agent, spec, operator
):
    make_agent("a3")
    actions.submit_job(spec(target_agent_ids=["a3"]), operator)
    (kept_assignment,) = actions.claim_tasks("a3", 10)
    kept = Task.objects.get(pk=kept_assignment.task_id)
    feed(*(publish("a1", running, seq, b"old output") for seq in range(1, 6)))
    feed(publish("a3", kept, 1, b"still running"))
    Task.objects.filter(pk=running.pk).update(state="succeeded", finished_at=clock.now() - timedelta(days=40))

    assert retention.prune(timedelta(days=30), dry_run=True).task_log_chunks == 5
    counts = retention.prune(timedelta(days=30), batch_size=1)

    assert (counts.tasks, counts.task_log_chunks) == (1, 5)
    assert not TaskLogChunk.objects.filter(task_id=running.pk).exists()
    assert not TaskLogAttempt.objects.filter(task_id=running.pk).exists()
    assert output(kept) == [(1, "stdout", b"still running")]
    assert summary(kept).chunks == 1


def test_late_output_of_a_failed_attempt_waiting_for_its_retry_is_kept_from_its_agent_only(running):
    Task.objects.filter(pk=running.pk).update(pinned=False)  # any agent may take the retry
    actions.report(
        "a1", actions.reports.Report("failed", running.pk, 1, message_id="f", error={"code": "x", "message": ""})
    )
    running.refresh_from_db()
    assert (running.state, running.agent_id, running.attempt) == ("queued", None, 1)  # released for its retry
    feed(publish("a1", running, 1, b"why it failed\n"), publish("a2", running, 2, b"not a2's"))
    assert output(running) == [(1, "stdout", b"why it failed\n")]
