"""Request bodies through daphne as the web role runs it (issue 13, item 7).

daphne (twisted) de-chunks a ``Transfer-Encoding: chunked`` body and hands it to
the application without a ``Content-Length``; Django REST framework then read an
empty body: a chunked event arrived as ``{}`` (400 "type required"), a chunked
heartbeat's body was ignored whatever it held, and a chunked body of any size was
"accepted". ``aegis_site.request_limits.BodyLimit`` reads it up to the limit: a
normal chunked body works like any other, one over the limit is a 413.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent
from tasks import actions
from tasks.engine.submit import JobSpec
from tasks.models import Task
from tests.roles import Roles, request

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

API = "/api/v1"


@pytest.fixture
def web(transactional_db: Any, tmp_path: Path) -> Iterator[str]:
    running = Roles(tmp_path)
    try:
        yield running.web()
    finally:
        running.stop()


def send(
    base_url: str, path: str, chunks: Iterable[bytes] | bytes, token: str = "", chunked: bool = True
) -> tuple[int, Any]:
    """POST as a client streaming its body would: ``Transfer-Encoding: chunked``, no ``Content-Length``."""
    where = urlparse(base_url)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
            connection.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            assert isinstance(chunks, bytes)
            connection.request("POST", path, body=chunks, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    finally:
        connection.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:300]


def agent_holding_a_task() -> tuple[str, str]:
    agent_id = "chunky-1"
    Agent.objects.create(pk=agent_id, max_concurrency=2, capabilities=["echo"])
    _credential, token = registry_actions.issue_token(agent_id, Actor("tester"))
    actions.submit_job(JobSpec(kind="echo", target_agent_ids=[agent_id]), Actor("tester"))
    return agent_id, token


def test_a_chunked_json_body_is_read_like_one_with_a_length(web: str) -> None:
    _agent_id, token = agent_holding_a_task()
    status, claimed = request(web, "POST", f"{API}/agent/tasks/claim/", {"max_tasks": 1}, token=token)
    assert status == 200, claimed
    task_id = claimed["tasks"][0]["id"]

    event = json.dumps({"type": "accepted", "attempt": 1, "event_id": "chunked-1"}).encode()
    status, answer = send(web, f"{API}/agent/tasks/{task_id}/events/", [event[:10], event[10:25], event[25:]], token)
    assert (status, answer) == (200, {"status": "applied", "state": "running"})
    assert Task.objects.get(pk=task_id).state == "running"

    # A chunked body that is wrong is judged, not dropped: the heartbeat's "running" must be a list.
    status, answer = send(web, f"{API}/agent/heartbeat/", [b'{"running": ', b'"not a list"}'], token)
    assert status == 400, answer
    assert "running" in answer["error"]["fields"]


def test_a_body_over_the_limit_is_a_413_chunked_or_not(web: str) -> None:
    _agent_id, token = agent_holding_a_task()
    megabyte = b"x" * (1024 * 1024)
    over = [b'{"running": [], "padding": "', megabyte, megabyte, b'"}']  # 2 MiB > API_MAX_BODY_BYTES (1 MiB)
    status, answer = send(web, f"{API}/agent/heartbeat/", over, token)
    assert status == 413, answer
    assert answer["error"]["code"] == "too_large"

    status, answer = send(web, f"{API}/agent/heartbeat/", b"".join(over), token, chunked=False)
    assert status == 413, answer
    assert answer["error"]["code"] == "too_large"

    # An agent's body is a protocol message: over 256 KiB it is refused too, below the API's 1 MiB.
    event = json.dumps({"type": "progress", "attempt": 1, "progress": {"log": "y" * 300_000}}).encode()
    status, answer = send(web, f"{API}/agent/heartbeat/", [event], token)
    assert status == 413, answer
