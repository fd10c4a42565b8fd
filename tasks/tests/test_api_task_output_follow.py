"""``GET /api/v1/tasks/{id}/logs/?follow=S`` and ``?download=1`` (issue 17, reading it live).

Run on both backends: on PostgreSQL a waiting follower is woken by the NOTIFY the bridge's batch
sends at its commit (the LISTEN thread of ``tasks.engine.output_waits``); on SQLite it polls.
The chunks are stored by another thread, so in another connection and transaction, as the bridge does.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.db import connection, transaction

from aegis_site.core import clock, wakeup
from tasks import actions
from tasks.api.output import DOWNLOAD_PAGE
from tasks.engine import output_waits
from tasks.engine.logs import Chunk, store_chunks
from tasks.models import Task, TaskState
from tasks.tests.output_fixtures import BIG, store
from tests.support import client_for, staff_user, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

ANSWER_WITHIN_S = 45  # far below the follow of 60 s: the answer came because of the chunk/the end, not the timeout


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    cache.clear()
    yield
    output_waits.WAITS.stop()  # no LISTEN connection outlives the test database


def reader() -> Any:
    from django.contrib.auth.models import User

    user = User.objects.filter(username="reader").first() or staff_user("reader", perms=("tasks.view_task",))
    return client_for(user)


class Follow(threading.Thread):
    """One reader's follow, in a thread of its own (its own connection), so the test can store meanwhile."""

    def __init__(self, client: Any, task: Task, **params: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.task, self.params = client, task, params
        self.response: Any = None

    def run(self) -> None:
        try:
            self.response = self.client.get(f"/api/v1/tasks/{self.task.pk}/logs/", self.params)
        finally:
            connection.close()


def in_other_thread(work: Any) -> None:
    """Run ``work`` in a thread (a connection and transaction of its own, like the bridge's) and wait for it."""

    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)


def test_a_follower_is_answered_when_a_chunk_is_stored_by_another_connection(running: Task) -> None:
    store(running, (1, "stdout", b"before\n"))
    follow = Follow(reader(), running, after_seq=1, follow=60)
    follow.start()
    wait_for(lambda: output_waits.WAITS.waiters(str(running.pk)) == 1, "the follower to wait", timeout=30)
    in_other_thread(lambda: store(running, (2, "stderr", b"after\n"), (3, "stdout", b"\xff\xfe")))
    follow.join(ANSWER_WITHIN_S)
    assert follow.response is not None, "the follower was not woken by the stored chunks"
    page = follow.response.json()
    assert follow.response.status_code == 200, page
    assert [(c["seq"], c["stream"]) for c in page["chunks"]] == [(2, "stderr"), (3, "stdout")]
    assert page["chunks"][0]["data"] == "after\n"
    assert base64.b64decode(page["chunks"][1]["data"]) == b"\xff\xfe"
    assert (page["after_seq"], page["max_seq"]) == (3, 3)
    assert output_waits.FOLLOWERS.count == 0


def test_commits_within_the_gather_time_come_in_one_answer(running: Task, settings: Any) -> None:
    # The default gather (0.25 s) is widened so that two commits made one after the other surely fall
    # inside it on a loaded machine; the answer then carries both, not only the first.
    settings.TASK_LOG_FOLLOW_GATHER_S = 30
    follow = Follow(reader(), running, follow=60)
    follow.start()
    wait_for(lambda: output_waits.WAITS.waiters(str(running.pk)) == 1, "the follower to wait", timeout=30)
    in_other_thread(lambda: store(running, (1, "stdout", b"one\n")))
    in_other_thread(lambda: store(running, (2, "stdout", b"two\n")))
    follow.join(ANSWER_WITHIN_S + 30)
    assert follow.response is not None, "the follower was not answered"
    assert [c["data"] for c in follow.response.json()["chunks"]] == ["one\n", "two\n"]


def test_a_full_page_is_answered_without_gathering(running: Task, settings: Any) -> None:
    settings.TASK_LOG_FOLLOW_GATHER_S = 3600  # were a full page held for it, the join below would time out
    follow = Follow(reader(), running, follow=60, limit=2)
    follow.start()
    wait_for(lambda: output_waits.WAITS.waiters(str(running.pk)) == 1, "the follower to wait", timeout=30)
    in_other_thread(lambda: store(running, (1, "stdout", b"a"), (2, "stdout", b"b"), (3, "stdout", b"c")))
    follow.join(ANSWER_WITHIN_S)
    assert follow.response is not None, "a full page waited for the gather time"
    page = follow.response.json()
    assert ([c["seq"] for c in page["chunks"]], page["more"]) == ([1, 2], True)


def test_a_follower_in_plain_text_gets_the_bytes_and_the_cursor(running: Task) -> None:
    follow = Follow(reader(), running, follow=60, format="txt")
    follow.start()
    wait_for(lambda: output_waits.WAITS.waiters(str(running.pk)) == 1, "the follower to wait", timeout=30)
    in_other_thread(lambda: store(running, (1, "stdout", b"one\n")))
    follow.join(ANSWER_WITHIN_S)
    assert follow.response is not None
    assert follow.response.content == b"one\n"
    assert follow.response["X-Aegis-After-Seq"] == "1"


def test_a_follow_that_sees_nothing_ends_with_an_empty_page(running: Task) -> None:
    store(running, (1, "stdout", b"x"))
    response = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"after_seq": 1, "follow": 1})
    assert response.status_code == 200
    page = response.json()
    assert (page["chunks"], page["after_seq"], page["more"], page["state"]) == ([], 1, False, "assigned")
    assert output_waits.FOLLOWERS.count == 0


def test_a_follower_is_answered_when_the_task_ends_and_at_once_for_an_ended_task(running: Task) -> None:
    follow = Follow(reader(), running, follow=60)
    follow.start()
    wait_for(lambda: output_waits.WAITS.waiters(str(running.pk)) == 1, "the follower to wait", timeout=30)
    in_other_thread(lambda: Task.objects.filter(pk=running.pk).update(state=TaskState.SUCCEEDED))
    follow.join(ANSWER_WITHIN_S)
    assert follow.response is not None, "the follower did not see its task end"
    assert (follow.response.json()["chunks"], follow.response.json()["state"]) == ([], "succeeded")
    # Already ended: the follow does not wait at all (no follower is counted).
    ended = Follow(reader(), running, follow=60)
    ended.start()
    ended.join(ANSWER_WITHIN_S)
    assert ended.response is not None
    assert ended.response.json()["state"] == "succeeded"


def test_chunks_already_there_are_answered_without_waiting(running: Task) -> None:
    store(running, (1, "stdout", b"a"), (2, "stdout", b"b"))
    page = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"follow": 60, "limit": 1}).json()
    assert ([c["seq"] for c in page["chunks"]], page["more"]) == ([1], True)


@pytest.mark.parametrize("follow", ["-1", "61", "x", "1.5"])
def test_a_bad_follow_is_a_400(running: Task, follow: str) -> None:
    response = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"follow": follow})
    assert response.status_code == 400, response.content
    assert "follow" in response.json()["error"]["fields"] or "follow" in str(response.json())


def test_followers_over_the_cap_get_a_503_json_error(running: Task, settings: Any) -> None:
    settings.TASK_LOG_MAX_FOLLOWERS = 1  # the cap is 200 by default: one slot taken here fills it
    assert output_waits.FOLLOWERS.reserve(1)
    try:
        response = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"follow": 5})
        assert response.status_code == 503, response.content
        assert response.json()["error"]["code"] == "too_many_followers"
        # Without follow (or with output waiting) nothing is refused.
        assert reader().get(f"/api/v1/tasks/{running.pk}/logs/").status_code == 200
    finally:
        output_waits.FOLLOWERS.release()


def test_download_is_the_whole_attempt_as_a_file(running: Task) -> None:
    parts = [
        (seq, "stdout" if seq % 3 else "stderr", f"line {seq} \x1b[31mred\x1b[0m\n".encode()) for seq in range(1, 600)
    ]
    parts.append((600, "stdout", bytes(range(256))))
    store(running, *parts)
    assert len(parts) > 2 * DOWNLOAD_PAGE  # read in several pages
    response = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"download": 1, "limit": 1})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/plain"
    assert response["Content-Disposition"] == f'attachment; filename="task-{running.pk}-attempt-1.log"'
    assert async_to_sync(collect)(response.streaming_content) == b"".join(data for _seq, _stream, data in parts)


async def collect(pieces: AsyncIterator[bytes]) -> bytes:
    """The streamed file (an async iterator: the server reads the database page by page as it sends)."""
    return b"".join([piece async for piece in pieces])


def test_download_needs_the_view_permission(running: Task) -> None:
    nobody = client_for(staff_user("nobody"))
    assert nobody.get(f"/api/v1/tasks/{running.pk}/logs/", {"download": 1}).status_code == 403
    assert reader().get("/api/v1/tasks/999999/logs/", {"download": 1}).status_code == 404


@pytest.mark.postgres
def test_the_batch_notifies_the_ids_of_the_tasks_it_stored_output_for_at_its_commit(running: Task) -> None:
    listener = wakeup.listen_connection(output_waits.CHANNEL)
    try:
        store(running, (1, "stdout", b"x"))
        (notify,) = list(listener.notifies(timeout=30, stop_after=1))
        assert (notify.channel, notify.payload) == (output_waits.CHANNEL, str(running.pk))
        with transaction.atomic():  # a batch that stores nothing (a duplicate seq) wakes nobody
            store_chunks([Chunk("a1", running.pk, running.attempt, 1, "stdout", b"x")], clock.now(), BIG)
        # Committed already: its NOTIFY would be on the listener's socket by now (this cannot fail falsely).
        assert list(listener.notifies(timeout=2)) == []
    finally:
        listener.close()


@pytest.mark.postgres
def test_a_batch_for_many_tasks_sends_an_empty_payload_meaning_everyone_looks(
    make_agent: Any, spec: Any, operator: Any
) -> None:
    make_agent("many", max_concurrency=60)
    actions.submit_job(spec(mode="any", task_count=60, target_agent_ids=["many"]), operator)
    assignments = actions.claim_tasks("many", 60)
    listener = wakeup.listen_connection(output_waits.CHANNEL)
    try:
        with transaction.atomic():
            chunks = [Chunk("many", a.task_id, a.attempt, 1, "stdout", b"x") for a in assignments]
            store_chunks(chunks, clock.now(), BIG)
        assert [n.payload for n in listener.notifies(timeout=30, stop_after=1)] == [""]
    finally:
        listener.close()
