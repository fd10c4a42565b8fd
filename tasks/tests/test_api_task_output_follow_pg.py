"""Followers of task output hold no database connection while they wait (daphne, the production pool).

daphne as the image runs it, with the pool's defaults (4 + 4 overflow): more readers follow
output than the pool has connections, and meanwhile ``/healthz/ready`` (which reads the
database) and an operator's API request are answered. A chunk stored then, by another
connection as the bridge's batch does, wakes the follower of its task through the NOTIFY.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import transaction

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from ops import actions as ops_actions
from registry.models import Agent, Connectivity
from tasks import actions as task_actions
from tasks.engine.logs import Caps, Chunk, store_chunks
from tasks.engine.submit import JobSpec
from tests.roles import Roles, request
from tests.support import staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

API = "/api/v1"
POOL = 4 + 4  # DB_POOL_SIZE + DB_MAX_OVERFLOW, the defaults
FOLLOW_S = 20
BIG = Caps(per_attempt=10**9, per_task=10**9)


@pytest.fixture
def web(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    roles = Roles(tmp_path)
    try:
        yield roles.web()
    finally:
        roles.stop()


class Follow(threading.Thread):
    """One reader's ``GET tasks/{id}/logs/?follow=``; ``sent`` once the server has the whole request."""

    def __init__(self, web: str, token: str, task_id: int) -> None:
        super().__init__(daemon=True)
        self.address = urlsplit(web).netloc
        self.token, self.task_id = token, task_id
        self.sent = threading.Event()
        self.answer: tuple[int, Any] | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.address, timeout=120)
        try:
            connection.request(
                "GET",
                f"{API}/tasks/{self.task_id}/logs/?follow={FOLLOW_S}",
                headers={"Authorization": f"Bearer {self.token}"},
            )
            self.sent.set()
            response = connection.getresponse()
            self.answer = (response.status, json.loads(response.read()))
        finally:
            connection.close()


def running_tasks(count: int) -> list[tuple[int, int]]:
    """``count`` tasks held by agent ``busy``: (task id, attempt)."""
    Agent.objects.create(pk="busy", connectivity=Connectivity.ONLINE, capabilities=["echo"], max_concurrency=count)
    spec = JobSpec(kind="echo", mode="any", task_count=count, target_agent_ids=["busy"])
    task_actions.submit_job(spec, Actor("tester"))
    return [(a.task_id, a.attempt) for a in task_actions.claim_tasks("busy", count)]


def test_more_followers_than_the_pool_holds_leave_the_database_free_and_a_chunk_wakes_its_follower(web: str) -> None:
    tasks = running_tasks(POOL + 4)
    assert len(tasks) == POOL + 4
    user = staff_user("reader", ("tasks.view_task",))
    token = ops_actions.issue_api_token(user, "probe", Actor("tester"))[1]

    follows = {task_id: Follow(web, token, task_id) for task_id, _attempt in tasks}
    for follow in follows.values():
        follow.start()
    for follow in follows.values():
        assert follow.sent.wait(30), "a follow could not be sent"

    # Asked after the follows, three times so that later rounds surely find every follower waiting: had each
    # waiting follower kept a connection, the pool would be empty and these would wait for one, then fail.
    for _ in range(3):
        status, ready = request(web, "GET", "/healthz/ready", timeout=30)
        assert status == 200, ready
        status, listed = request(web, "GET", f"{API}/tasks/", token=token, timeout=30)
        assert status == 200, listed
    assert all(follow.is_alive() for follow in follows.values()), "the follows ended before the checks ran"

    # A chunk for one task, stored by this process's connection (as the bridge's batch would): its follower
    # is answered with it, not with an empty page at the end of its follow.
    woken, attempt = tasks[3]
    with transaction.atomic():
        store_chunks([Chunk("busy", woken, attempt, 1, "stdout", b"hello\n")], clock.now(), BIG)
    follows[woken].join(FOLLOW_S + 30)
    status, page = follows[woken].answer or (0, None)
    assert status == 200, page
    assert [chunk["data"] for chunk in page["chunks"]] == ["hello\n"]

    for task_id, follow in follows.items():
        follow.join(FOLLOW_S + 30)
        if task_id != woken:
            status, page = follow.answer or (0, None)
            assert (status, page["chunks"] if page else None) == (200, []), (task_id, follow.answer)
