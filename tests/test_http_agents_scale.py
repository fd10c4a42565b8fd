"""Many waiting long polls hold neither a database connection nor a thread each (issue 19, item 2).

daphne runs as production runs it (DEBUG off, the pool on: 4 + 4 overflow), with its own
``PGAPPNAME`` so that its connections can be counted in ``pg_stat_activity``. Sixty
claims wait at once, more than the pool has connections and far more than the few
threads a process needs; while they wait, the web process holds a constant number of
both, and a job submitted then still reaches the waiting agent it is for.

A sync-only middleware above the view makes Django run each request below it in a
thread blocked for the whole wait: the thread count then grows with the waits. Which
middleware the production settings load is read from a process with ``DEBUG`` off.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from asgiref.sync import iscoroutinefunction
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import AsyncRequestFactory

from aegis_site.core.audit import Actor
from ops.metrics.middleware import RequestContextMiddleware
from registry import actions as registry_actions
from registry.models import Agent, Connectivity, Transport
from tasks import actions as task_actions
from tasks.engine.submit import JobSpec
from tests.roles import ROOT, Roles, request, role_env
from tests.support import wait_for

API = "/api/v1"
AGENTS = 30
WAITS_PER_AGENT = 2  # API_CLAIM_MAX_WAITS_PER_AGENT's default: 60 waiting claims
WAIT_S = 120  # longer than the test: every claim still waits when counted, and is ended by the test
POOL = 4 + 4  # DB_POOL_SIZE + DB_MAX_OVERFLOW, the defaults
MOST_CONNECTIONS = POOL + 2  # the pool, the LISTEN connection of the claims' wakeups, one to spare
MOST_THREADS = 16  # daphne's, the LISTEN thread, the loop's executor: a handful, whatever the number of waits


class Poll(threading.Thread):
    """One ``POST agent/tasks/claim/`` with ``wait_s``; ``cancel`` hangs up, as an agent that goes away."""

    def __init__(self, web: str, token: str) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection(urlsplit(web).netloc, timeout=WAIT_S + 60)
        self.token = token
        self.sent = threading.Event()
        self.answer: tuple[int, Any] | None = None

    def run(self) -> None:
        try:
            self.connection.request(
                "POST",
                f"{API}/agent/tasks/claim/",
                json.dumps({"max_tasks": 1, "wait_s": WAIT_S}),
                {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            self.sent.set()
            response = self.connection.getresponse()
            self.answer = (response.status, json.loads(response.read()))
        except OSError:
            pass  # hung up by cancel
        finally:
            self.connection.close()

    def cancel(self) -> None:
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def application_name() -> str:
    return f"aegis-test-web-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def web(transactional_db: Any, tmp_path: Path, application_name: str) -> Iterator[tuple[str, int]]:
    roles = Roles(tmp_path)
    try:
        # API_CLAIM_MAX_WAIT differs from production (30 s): a claim must outlast the counting on a busy machine.
        url = roles.web(PGAPPNAME=application_name, API_CLAIM_MAX_WAIT=str(WAIT_S))
        yield url, roles.processes["web"].pid
    finally:
        roles.stop()


def connections_of(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def sync_only_middleware(data_dir: Path) -> list[str]:
    """The middleware the production settings (``DEBUG`` off) load that cannot run async."""
    script = (
        "import json, django; django.setup(); from django.conf import settings;"
        "from django.utils.module_loading import import_string;"
        "print(json.dumps([m for m in settings.MIDDLEWARE if not getattr(import_string(m), 'async_capable', False)]))"
    )
    env = role_env(data_dir)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, check=True, text=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def http_agent_token(agent_id: str) -> str:
    Agent.objects.create(pk=agent_id, connectivity=Connectivity.ONLINE, capabilities=["echo"])
    return registry_actions.issue_token(agent_id, Actor("tester"))[1]


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_sixty_waiting_claims_hold_neither_a_connection_nor_a_thread_each(
    web: tuple[str, int], application_name: str, tmp_path: Path
) -> None:
    url, pid = web
    tokens = {f"waiter-{number:02d}": http_agent_token(f"waiter-{number:02d}") for number in range(AGENTS)}
    daphne = psutil.Process(pid)

    polls = {
        (agent_id, slot): Poll(url, token) for agent_id, token in tokens.items() for slot in range(WAITS_PER_AGENT)
    }
    try:
        for poll in polls.values():
            poll.start()
        for poll in polls.values():
            assert poll.sent.wait(30), "a claim could not be sent"
        # A claim records its agent as an HTTP agent before it claims and waits: once all are, every claim
        # has been read, and the few that have not reached their wait yet are a claim transaction away.
        wait_for(
            lambda: Agent.objects.filter(transport=Transport.HTTP).count() == AGENTS,
            "every agent's claims to reach the server",
            timeout=60,
        )
        counted: dict[str, int] = {}

        def settled() -> bool:
            counted.update(threads=daphne.num_threads(), connections=connections_of(application_name))
            return counted["threads"] <= MOST_THREADS and counted["connections"] <= MOST_CONNECTIONS

        held_constant = True
        try:
            wait_for(settled, "the web process to hold a constant number of threads and connections", timeout=20)
        except AssertionError:
            held_constant = False
        assert all(poll.is_alive() and poll.answer is None for poll in polls.values()), "a claim ended too soon"
        waiting = f"{len(polls)} waiting claims: {counted['threads']} threads, {counted['connections']} connections"
        if not held_constant:
            sync_only = sync_only_middleware(tmp_path)
            if sync_only:
                pytest.xfail(f"{waiting}; sync-only middleware holds a thread per request: {sync_only}")
        assert held_constant, waiting

        # The waits let their threads go: the claim after a wakeup still runs and answers.
        job, _ = task_actions.submit_job(JobSpec(kind="echo", target_agent_ids=["waiter-07"]), Actor("tester"))
        answered = wait_for(
            lambda: [poll.answer for (agent_id, _), poll in polls.items() if agent_id == "waiter-07" and poll.answer],
            "waiter-07's claim to answer with its task",
            timeout=60,
        )
        assert len(answered) == 1, answered  # one task: the agent's other claim goes on waiting
        status, body = answered[0]
        assert status == 200, body
        assert [task["job_id"] for task in body["tasks"]] == [job.pk]
    finally:
        for poll in polls.values():
            poll.cancel()
        for poll in polls.values():
            poll.join(30)
    # Hung up, the waits end and give back their slots: each agent may wait again.
    wait_for(lambda: connections_of(application_name) <= MOST_CONNECTIONS, "the connections after the hang-ups")
    status, body = request(
        url, "POST", f"{API}/agent/tasks/claim/", {"max_tasks": 1, "wait_s": 0}, token=tokens["waiter-01"]
    )
    assert (status, body) == (200, {"tasks": []})


def test_request_context_middleware_runs_async_and_keeps_the_request_id() -> None:
    """Async capable: under daphne the chain stays async (no thread per request) and the id still travels."""

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    middleware = RequestContextMiddleware(view)
    assert iscoroutinefunction(middleware)  # what Django asks to keep the chain async
    request_id = "probe-" + uuid.uuid4().hex[:12]
    answer = middleware(AsyncRequestFactory().get("/healthz", headers={"X-Request-ID": request_id}))
    assert inspect.isawaitable(answer)
    response = asyncio.run(_awaited(answer))
    assert response["X-Request-ID"] == request_id
    assert response.content == b"ok"


async def _awaited(answer: Awaitable[HttpResponse]) -> HttpResponse:
    return await answer
