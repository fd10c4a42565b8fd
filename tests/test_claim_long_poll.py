"""Long-poll claims hold no database connection while they wait (issue 12, item 6).

daphne runs with the production pool (4 + 4 overflow). More agents wait in
``claim`` than the pool has connections, and meanwhile ``/healthz``, readiness
and an operator's API request are answered; a job submitted then reaches the
waiting agent it is for. One agent cannot pile up waits: past the cap it gets 429.
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

from aegis_site.core.audit import Actor
from ops import actions as ops_actions
from registry import actions as registry_actions
from registry.models import Agent, Connectivity
from tasks import actions as task_actions
from tasks.engine.submit import JobSpec
from tests.roles import Roles, request
from tests.support import staff_user, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

API = "/api/v1"
POOL = 4 + 4  # DB_POOL_SIZE + DB_MAX_OVERFLOW, the defaults
WAIT_S = 20


@pytest.fixture
def web(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    roles = Roles(tmp_path)
    try:
        yield roles.web()
    finally:
        roles.stop()


class Claim(threading.Thread):
    """One agent's ``POST agent/tasks/claim/`` with ``wait_s``; ``sent`` once the server has the whole request."""

    def __init__(self, web: str, token: str, wait_s: float = WAIT_S) -> None:
        super().__init__(daemon=True)
        self.address = urlsplit(web).netloc
        self.token, self.wait_s = token, wait_s
        self.sent = threading.Event()
        self.answer: tuple[int, Any] | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.address, timeout=120)
        try:
            connection.request(
                "POST",
                f"{API}/agent/tasks/claim/",
                json.dumps({"max_tasks": 1, "wait_s": self.wait_s}),
                {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            self.sent.set()
            response = connection.getresponse()
            self.answer = (response.status, json.loads(response.read()))
        finally:
            connection.close()


def start_all(claims: list[Claim]) -> None:
    """Start the claims and return once every request is sent, so what the test asks next arrives after them."""
    for claim in claims:
        claim.start()
    for claim in claims:
        assert claim.sent.wait(30), "a claim could not be sent"


def agent_token(agent_id: str) -> str:
    Agent.objects.create(pk=agent_id, connectivity=Connectivity.ONLINE, capabilities=["echo"])
    return registry_actions.issue_token(agent_id, Actor("tester"))[1]


def operator_token() -> str:
    user = staff_user("ops", ("tasks.view_task",))
    return ops_actions.issue_api_token(user, "probe", Actor("tester"))[1]


def test_more_waiting_claims_than_the_pool_holds_leave_health_and_the_api_answering(web: str) -> None:
    tokens = {f"poller-{number:02d}": agent_token(f"poller-{number:02d}") for number in range(POOL + 4)}
    operator = operator_token()

    claims = {agent_id: Claim(web, token) for agent_id, token in tokens.items()}
    start_all(list(claims.values()))

    # Asked after the claims (the old code held a connection per waiting claim: these got none, 500 after
    # the pool's timeout), and asked three times, so that the later rounds surely find every claim waiting.
    for _ in range(3):
        status, health = request(web, "GET", "/healthz", timeout=30)
        assert status == 200, health
        status, ready = request(web, "GET", "/healthz/ready", timeout=30)
        assert status == 200, ready
        status, listed = request(web, "GET", f"{API}/tasks/", token=operator, timeout=30)
        assert status == 200, listed
    assert all(claim.is_alive() for claim in claims.values()), "the claims ended before the checks ran"

    # A job for one of them wakes that agent's wait: it gets the task, not an empty answer at the deadline.
    job, _ = task_actions.submit_job(JobSpec(kind="echo", target_agent_ids=["poller-03"]), Actor("tester"))
    claims["poller-03"].join(WAIT_S + 30)
    status, answer = claims["poller-03"].answer or (0, None)
    assert status == 200, answer
    assert [task["job_id"] for task in answer["tasks"]] == [job.pk]

    for agent_id, claim in claims.items():
        claim.join(WAIT_S + 30)
        if agent_id != "poller-03":
            assert claim.answer == (200, {"tasks": []}), (agent_id, claim.answer)


def test_one_agent_cannot_pile_up_waiting_claims(web: str) -> None:
    token = agent_token("greedy")
    operator = operator_token()
    claims = [Claim(web, token, wait_s=WAIT_S) for _ in range(12)]
    start_all(claims)
    refused = wait_for(
        lambda: [claim for claim in claims if claim.answer is not None] if count_answered(claims) >= 10 else None,
        "the claims over the cap to be refused",
        timeout=60,
    )
    for claim in refused:
        status, body = claim.answer or (0, None)
        assert status == 429, body
        assert body["error"]["code"] == "throttled"
    assert request(web, "GET", "/healthz", timeout=30)[0] == 200
    assert request(web, "GET", f"{API}/tasks/", token=operator, timeout=30)[0] == 200
    for claim in claims:
        claim.join(WAIT_S + 30)
    assert sorted(claim.answer[0] for claim in claims if claim.answer) == [200] * 2 + [429] * 10


def count_answered(claims: list[Claim]) -> int:
    return sum(1 for claim in claims if claim.answer is not None)
