"""``GET /api/v1/tasks/{id}/logs/``: the output by cursor, complete and in order, as JSON or as the bytes."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from tasks.engine.logs import Caps
from tasks.engine.output import GAP_WAIT
from tasks.models import Task, TaskLogChunk
from tasks.tests.output_fixtures import store
from tests.support import client_for, staff_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles() -> None:
    cache.clear()


def reader(perms=("tasks.view_task",)):
    from django.contrib.auth.models import User

    User.objects.filter(username="reader").delete()
    return client_for(staff_user("reader", perms=perms))


def logs(task: Task, user_perms=("tasks.view_task",), **params):
    return reader(user_perms).get(f"/api/v1/tasks/{task.pk}/logs/", params)


def test_json_pages_follow_the_cursor_without_skipping_or_repeating(running):
    store(running, *[(seq, "stdout" if seq % 2 else "stderr", f"line {seq}\n".encode()) for seq in range(1, 8)])
    first = logs(running, limit=3).json()
    assert [c["seq"] for c in first["chunks"]] == [1, 2, 3]
    assert (first["after_seq"], first["more"], first["max_seq"], first["missing"]) == (3, True, 7, 0)
    assert first["chunks"][1] == {"seq": 2, "stream": "stderr", "data": "line 2\n", "encoding": "utf-8"}
    rest = logs(running, after_seq=first["after_seq"], limit=10).json()
    assert [c["seq"] for c in rest["chunks"]] == [4, 5, 6, 7]
    assert (rest["after_seq"], rest["more"]) == (7, False)
    idle = logs(running, after_seq=7).json()
    assert (idle["chunks"], idle["after_seq"]) == ([], 7)


def test_a_page_stops_before_a_young_gap_and_the_chunk_that_fills_it_is_read_in_its_place(running):
    """Two bridge replicas can commit seq 3 before seq 2: a cursor that went past 3 would never read 2."""
    store(running, (1, "stdout", b"a"), (3, "stdout", b"c"))
    page = logs(running).json()
    assert ([c["seq"] for c in page["chunks"]], page["after_seq"], page["max_seq"], page["missing"]) == ([1], 1, 3, 1)
    assert logs(running, after_seq=1).json()["chunks"] == []  # held at the gap, not skipped
    store(running, (2, "stdout", b"b"))
    rest = logs(running, after_seq=1).json()
    assert ([c["data"] for c in rest["chunks"]], rest["missing"]) == (["b", "c"], 0)


def test_a_gap_still_open_after_the_wait_is_stepped_over_and_counted_as_missing(running):
    store(running, (1, "stdout", b"a"), (3, "stdout", b"c"), (4, "stdout", b"d"))
    TaskLogChunk.objects.filter(task=running).update(received_at=timezone.now() - GAP_WAIT - timedelta(seconds=1))
    page = logs(running).json()
    assert ([c["seq"] for c in page["chunks"]], page["after_seq"], page["missing"]) == ([1, 3, 4], 4, 1)


def test_bytes_that_are_not_utf8_come_as_base64_and_plain_text_is_the_exact_bytes(running):
    raw = bytes(range(256))
    store(running, (1, "stdout", b"text "), (2, "stdout", raw), (3, "stderr", b"\n"))
    chunk = logs(running).json()["chunks"][1]
    assert chunk["encoding"] == "base64"
    assert base64.b64decode(chunk["data"]) == raw
    plain = reader().get(f"/api/v1/tasks/{running.pk}/logs/", {"after_seq": 0}, HTTP_ACCEPT="text/plain")
    assert plain.status_code == 200
    assert plain["Content-Type"].startswith("text/plain")
    assert plain.content == b"text " + raw + b"\n"
    assert (plain["X-Aegis-After-Seq"], plain["X-Aegis-More"]) == ("3", "false")
    by_format = logs(running, format="txt", limit=1)
    assert (by_format.content, by_format["X-Aegis-More"]) == (b"text ", "true")


def test_the_truncation_marker_and_an_earlier_attempt_are_readable(running):
    store(running, (1, "stdout", b"x" * 10), (2, "stdout", b"y" * 10), caps=Caps(per_attempt=15, per_task=10**9))
    page = logs(running).json()
    assert page["truncated_at"] == 10
    assert page["chunks"][-1]["stream"] == "system"
    assert "truncated at 10 bytes" in page["chunks"][-1]["data"]
    assert logs(running, attempt=1).json()["attempts"] == [1]
    assert logs(running, attempt=2).json()["chunks"] == []


@pytest.mark.parametrize(
    "params", [{"after_seq": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"attempt": "x"}, {"tail": "5"}]
)
def test_bad_query_is_a_400_naming_it(running, params):
    response = logs(running, **params)
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")


def test_needs_view_permission_and_an_existing_task(running):
    assert logs(running, user_perms=()).status_code == 403
    missing = reader().get("/api/v1/tasks/999999/logs/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
