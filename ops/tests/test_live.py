"""Live updates: the real ASGI app, a real session cookie, changes made through the actions.

The tests run their websocket conversation in an event loop of their own (``async_to_sync``);
the database work of each step goes through ``database_sync_to_async`` as it would in daphne.
Transactional database: the feed reads from its own connection, so changes must be committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from aegis_site.asgi import application
from aegis_site.core.audit import Actor
from ops.live import feed as live_feed
from ops.live.consumer import REFUSED
from registry import actions as registry_actions
from registry.models import AdminState
from tasks import actions as task_actions
from tasks.engine.reports import Report
from tasks.engine.submit import JobSpec
from tests.support import staff_user

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/admin/live/"
ORIGIN = (b"origin", b"http://localhost")
OPERATOR = Actor("operator")


@pytest.fixture(autouse=True)
def fast_live(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LIVE_POLL_INTERVAL = 0.05
    settings.LIVE_SEEN_INTERVAL = 0.0
    settings.LIVE_HEALTH_INTERVAL = 3600.0


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    """The ``sessionid`` cookie of a real login, as the browser would send it."""
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return b"cookie", f"{name}={client.cookies[name].value}".encode()


VIEWER = ("registry.view_agent", "tasks.view_task", "tasks.view_job", "core.view_auditevent")


@pytest.fixture
def staff_cookie(db) -> tuple[bytes, bytes]:
    """A staff user who may view every page the socket refreshes."""
    return session_cookie(staff_user("watcher", VIEWER))


def socket(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, PATH, headers=list(headers))


async def changed_topics(communicator: WebsocketCommunicator, wanted: str, timeout: float = 5.0) -> list[str]:
    """Events until one names ``wanted``; its topics."""
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        assert message["type"] == "changed"
        if wanted in message["topics"]:
            return list(message["topics"])


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


async def connected(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    communicator = socket(*headers)
    accepted, _ = await communicator.connect(timeout=5)
    assert accepted
    return communicator


def test_staff_socket_hears_of_an_agent_drained_through_the_action(staff_cookie, make_agent):
    make_agent("node-1")

    async def scenario() -> None:
        communicator = await connected(ORIGIN, staff_cookie)
        try:
            await database_sync_to_async(registry_actions.set_admin_state)("node-1", AdminState.DRAINING, OPERATOR)
            topics = await changed_topics(communicator, "agents")
            assert "audit" in topics  # the drain wrote its audit row in the same transaction
        finally:
            await communicator.disconnect()

    run(scenario)


def test_staff_socket_hears_of_tasks_and_jobs_when_an_agent_reports(staff_cookie, make_agent):
    make_agent("node-1")
    task_actions.submit_job(JobSpec(kind="echo", mode="any", task_count=1, target_all=True), OPERATOR)
    (assignment,) = task_actions.claim_tasks("node-1", 1)

    def succeed() -> None:
        report = Report("succeeded", assignment.task_id, assignment.attempt, message_id=uuid.uuid4().hex, result={})
        task_actions.report("node-1", report)

    async def scenario() -> None:
        communicator = await connected(ORIGIN, staff_cookie)
        try:
            await database_sync_to_async(succeed)()
            topics = await changed_topics(communicator, "tasks")
            assert "jobs" in topics
            assert "agents" not in topics
        finally:
            await communicator.disconnect()

    run(scenario)


def test_nothing_is_sent_while_nothing_changes(staff_cookie, make_agent):
    make_agent("node-1")

    async def scenario() -> None:
        communicator = await connected(ORIGIN, staff_cookie)
        try:
            assert await communicator.receive_nothing(timeout=0.5)
        finally:
            await communicator.disconnect()

    run(scenario)


def test_heartbeats_announce_agents_no_more_often_than_the_seen_interval(settings, staff_cookie, make_agent):
    """``last_seen_at`` moves on every heartbeat flush; the pages hear of it at most every LIVE_SEEN_INTERVAL."""
    settings.LIVE_SEEN_INTERVAL = 3600.0
    make_agent("node-1")

    def heartbeat() -> None:
        from aegis_site.core import clock

        registry_actions.touch_agents({"node-1": clock.now()})

    async def scenario() -> None:
        communicator = await connected(ORIGIN, staff_cookie)
        try:
            await database_sync_to_async(heartbeat)()
            assert "agents" in await changed_topics(communicator, "agents")  # the first one is announced
            await database_sync_to_async(heartbeat)()
            assert await communicator.receive_nothing(timeout=0.5)  # the next ones wait for the interval
        finally:
            await communicator.disconnect()

    run(scenario)


def test_two_sockets_share_one_feed_that_stops_after_the_last(staff_cookie, make_agent):
    make_agent("node-1")

    async def scenario() -> None:
        first = await connected(ORIGIN, staff_cookie)
        second = await connected(ORIGIN, staff_cookie)
        feed = live_feed.feed_for_this_loop()
        assert feed.listeners == 2
        await database_sync_to_async(registry_actions.set_admin_state)("node-1", AdminState.DISABLED, OPERATOR)
        assert "agents" in await changed_topics(first, "agents")
        assert "agents" in await changed_topics(second, "agents")
        await first.disconnect()
        assert feed.listeners == 1
        assert feed._task is not None
        await second.disconnect()
        assert feed.listeners == 0
        assert feed._task is None

    run(scenario)


def test_malformed_messages_are_ignored_and_the_socket_keeps_working(staff_cookie, make_agent):
    make_agent("node-1")

    async def scenario() -> None:
        communicator = await connected(ORIGIN, staff_cookie)
        try:
            for junk in ("not json", "[1, 2]", '{"type": 7}', "{" * 5000, '"ping"'):
                await communicator.send_to(text_data=junk)
            await communicator.send_to(bytes_data=b"\x00\xff binary")
            assert await communicator.receive_nothing(timeout=0.3)
            await communicator.send_json_to({"type": "ping"})
            assert await communicator.receive_json_from(timeout=2) == {"type": "pong"}
            await database_sync_to_async(registry_actions.set_admin_state)("node-1", AdminState.DRAINING, OPERATOR)
            assert "agents" in await changed_topics(communicator, "agents")
        finally:
            await communicator.disconnect()

    run(scenario)


def refused_with(*headers: tuple[bytes, bytes]) -> Any:
    """How the server answers: ("handshake denied", code) or ("closed", code) after accepting."""
    outcome: list[Any] = []

    async def scenario() -> None:
        communicator = socket(*headers)
        accepted, code = await communicator.connect(timeout=5)
        if not accepted:
            outcome.append(("handshake denied", code))
            return
        closing = await communicator.receive_output(timeout=5)
        outcome.append(("closed", closing.get("code")) if closing["type"] == "websocket.close" else ("open", None))
        await communicator.wait()

    run(scenario)
    return outcome[0]


def test_anonymous_socket_is_refused():
    assert refused_with(ORIGIN) == ("closed", REFUSED)


def test_socket_of_a_user_who_is_not_staff_is_refused(django_user_model):
    visitor = django_user_model.objects.create_user("visitor", password="pw-visitor-1")

    assert refused_with(ORIGIN, session_cookie(visitor)) == ("closed", REFUSED)


def test_socket_of_an_inactive_staff_user_is_refused(django_user_model):
    user = django_user_model.objects.create_user("former", password="pw-former-1", is_staff=True)
    cookie = session_cookie(user)
    user.is_active = False
    user.save(update_fields=["is_active"])

    assert refused_with(ORIGIN, cookie) == ("closed", REFUSED)


def test_socket_of_staff_who_may_view_nothing_is_refused(django_user_model):
    user = django_user_model.objects.create_user("bystander", password="pw-bystander-1", is_staff=True)

    assert refused_with(ORIGIN, session_cookie(user)) == ("closed", REFUSED)


def test_a_socket_hears_only_the_topics_its_user_may_view(make_agent):
    """Agents only: the drain's audit row (and any task or job change) is not announced to this user."""
    make_agent("node-1")
    cookie = session_cookie(staff_user("agents-only", ("registry.view_agent",)))

    async def scenario() -> None:
        communicator = await connected(ORIGIN, cookie)
        try:
            await database_sync_to_async(registry_actions.set_admin_state)("node-1", AdminState.DRAINING, OPERATOR)
            assert await changed_topics(communicator, "agents") == ["agents"]
        finally:
            await communicator.disconnect()

    run(scenario)


def test_socket_from_another_site_is_denied_at_the_handshake(staff_cookie):
    assert refused_with((b"origin", b"https://evil.example"), staff_cookie)[0] == "handshake denied"


def test_socket_without_an_origin_is_denied_at_the_handshake(staff_cookie):
    assert refused_with(staff_cookie)[0] == "handshake denied"


def test_other_websocket_paths_are_denied_at_the_handshake(staff_cookie):
    async def scenario() -> None:
        communicator = WebsocketCommunicator(application, "/ws/other/", headers=[ORIGIN, staff_cookie])
        accepted, _ = await communicator.connect(timeout=5)
        assert not accepted

    run(scenario)


def test_moved_topics_follow_the_watermarks():
    before = live_feed.Watermarks(10, 5, "t1", "s1")

    assert live_feed.moved(before, before) == set()
    assert live_feed.moved(before, live_feed.Watermarks(11, 5, "t1", "s1")) == {"tasks", "jobs"}
    assert live_feed.moved(before, live_feed.Watermarks(10, 6, "t1", "s1")) == {"audit", "jobs"}
    assert live_feed.moved(before, live_feed.Watermarks(10, 5, "t2", "s1")) == {"agents"}
    assert live_feed.moved(before, live_feed.Watermarks(10, 5, "t1", "s2")) == {"seen"}


def test_pacer_announces_health_on_its_own_clock(settings):
    settings.LIVE_HEALTH_INTERVAL = 10.0
    settings.LIVE_SEEN_INTERVAL = 5.0
    pacer = live_feed.Pacer(started_at=100.0)

    assert pacer.topics(set(), 105.0) == set()
    assert pacer.topics({"seen"}, 105.0) == {"agents"}
    assert pacer.topics({"seen"}, 107.0) == set()
    assert pacer.topics(set(), 110.0) == {"health"}
    assert pacer.topics({"seen", "tasks"}, 110.5) == {"agents", "tasks"}
