"""The admin task page's live tail socket (``tasks.live.output_tail``): the real ASGI app and a real session.

Transactional database: the socket reads with connections of its own, so what the test stores
is committed (by another thread, as the bridge would). On PostgreSQL the socket is woken by the
bridge batch's NOTIFY; on SQLite it polls.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from aegis_site.asgi import application
from tasks.engine import output_waits
from tasks.live import output_tail
from tasks.models import Task
from tasks.tests.output_fixtures import store
from tests.support import staff_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

ORIGIN = (b"origin", b"http://localhost")
RECEIVE_S = 30  # generous: a loaded machine; the answer comes at once when things work


@pytest.fixture(autouse=True)
def _fast_hashing_and_no_listener_left(settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # logins in tests only
    yield
    output_waits.WAITS.stop()


def cookie_of(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return b"cookie", f"{name}={client.cookies[name].value}".encode()


def tail(task: Task, user_cookie: tuple[bytes, bytes], query: str = "") -> WebsocketCommunicator:
    path = f"/ws/admin/tasks/{task.pk}/output/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=[ORIGIN, user_cookie])


def test_the_tail_sends_what_is_stored_then_each_new_chunk_as_it_is_stored(running: Task) -> None:
    store(running, (1, "stdout", b"first\n"), (2, "stderr", b"\x1b[31mred\x1b[0m\n"))
    viewer = cookie_of(staff_user("viewer", ("tasks.view_task",)))

    async def scenario() -> None:
        socket = tail(running, viewer)
        accepted, _ = await socket.connect(timeout=RECEIVE_S)
        assert accepted
        try:
            first = await socket.receive_json_from(timeout=RECEIVE_S)
            assert first["type"] == "output"
            assert [(c["seq"], c["data"]) for c in first["chunks"]] == [(1, "first\n"), (2, "\x1b[31mred\x1b[0m\n")]
            assert (first["attempt"], first["state"], first["skipped"]) == (1, "assigned", 0)
            await sync_to_async(store, thread_sensitive=False)(running, (3, "stdout", b"\xff\x00late\n"))
            second = await socket.receive_json_from(timeout=RECEIVE_S)
            assert [c["seq"] for c in second["chunks"]] == [3]
            assert base64.b64decode(second["chunks"][0]["data"]) == b"\xff\x00late\n"
        finally:
            await socket.disconnect()

    async_to_sync(scenario)()


def test_a_long_output_starts_at_the_backlog_and_a_cursor_is_honoured(running: Task, monkeypatch: Any) -> None:
    monkeypatch.setattr(output_tail, "BACKLOG_CHUNKS", 3)  # 3, not 500: a few chunks show the cut
    store(running, *[(seq, "stdout", f"{seq}\n".encode()) for seq in range(1, 11)])
    viewer = cookie_of(staff_user("viewer", ("tasks.view_task",)))

    async def first_message(query: str) -> dict[str, Any]:
        socket = tail(running, viewer, query)
        accepted, _ = await socket.connect(timeout=RECEIVE_S)
        assert accepted
        try:
            message: dict[str, Any] = await socket.receive_json_from(timeout=RECEIVE_S)
            return message
        finally:
            await socket.disconnect()

    backlog = async_to_sync(first_message)("")
    assert ([c["seq"] for c in backlog["chunks"]], backlog["skipped"]) == ([8, 9, 10], 7)
    resumed = async_to_sync(first_message)("after_seq=9&attempt=1")
    assert ([c["seq"] for c in resumed["chunks"]], resumed["skipped"]) == ([10], 0)


@pytest.mark.parametrize(("perms", "is_staff"), [((), True), (("tasks.view_task",), False)])
def test_users_who_may_not_view_tasks_are_refused_with_4403(running: Task, perms: Any, is_staff: bool) -> None:
    store(running, (1, "stdout", b"secret\n"))
    cookie = cookie_of(staff_user("someone", perms, is_staff=is_staff))

    async def scenario() -> None:
        socket = tail(running, cookie)
        await socket.connect(timeout=RECEIVE_S)
        closed = await socket.receive_output(timeout=RECEIVE_S)
        assert closed == {"type": "websocket.close", "code": output_tail.REFUSED}

    async_to_sync(scenario)()


def test_an_anonymous_socket_is_refused_and_an_unknown_task_is_4404(running: Task) -> None:
    viewer = cookie_of(staff_user("viewer", ("tasks.view_task",)))

    async def scenario() -> None:
        anonymous = WebsocketCommunicator(application, f"/ws/admin/tasks/{running.pk}/output/", headers=[ORIGIN])
        await anonymous.connect(timeout=RECEIVE_S)
        assert (await anonymous.receive_output(timeout=RECEIVE_S))["code"] == output_tail.REFUSED
        missing = WebsocketCommunicator(application, "/ws/admin/tasks/999999/output/", headers=[ORIGIN, viewer])
        await missing.connect(timeout=RECEIVE_S)
        assert (await missing.receive_output(timeout=RECEIVE_S))["code"] == output_tail.NOT_FOUND

    async_to_sync(scenario)()


def test_a_task_deleted_while_tailed_closes_the_socket_with_4404(running: Task) -> None:
    viewer = cookie_of(staff_user("viewer", ("tasks.view_task",)))

    async def scenario() -> None:
        socket = tail(running, viewer)
        accepted, _ = await socket.connect(timeout=RECEIVE_S)
        assert accepted
        assert (await socket.receive_json_from(timeout=RECEIVE_S))["type"] == "output"
        await sync_to_async(Task.objects.filter(pk=running.pk).delete, thread_sensitive=False)()  # as prune does
        closed = await socket.receive_output(timeout=RECEIVE_S)
        assert closed == {"type": "websocket.close", "code": output_tail.NOT_FOUND}

    async_to_sync(scenario)()


def test_the_task_page_offers_the_attempts_that_have_output(running: Task) -> None:
    store(running, (1, "stdout", b"first attempt\n"))
    viewer = staff_user("viewer", ("tasks.view_task",))
    client = Client()
    client.force_login(viewer)
    url = f"/admin/tasks/task/{running.pk}/change/"
    page = client.get(url).content.decode()
    assert '<select id="task-output-attempt" hidden>' in page  # one attempt: no choice to offer
    assert f'href="/api/v1/tasks/{running.pk}/logs/?download=1&amp;attempt=1"' in page
    Task.objects.filter(pk=running.pk).update(attempt=2)  # the retry's attempt, as the queue would number it
    running.refresh_from_db()
    store(running, (1, "stdout", b"second attempt\n"))
    page = client.get(url).content.decode()
    assert '<select id="task-output-attempt">' in page
    assert '<option value="1">1</option><option value="2" selected>2</option>' in page
