"""Every line the roles write is one JSON object, and the log queries of docs/operations.md find their events.

The web (daphne, as the image runs it), the bridge and the dispatcher run as processes with
the production defaults and ``LOG_FORMAT=json``. The test drives a slow request, failed
authentications up to a rate limit, a 500 (a table the view needs renamed away under the
running web), a task's whole life over MQTT, a malformed MQTT message, and, through a
test-only ``sitecustomize`` on the processes' ``PYTHONPATH``, a Python warning and an
uncaught exception in a thread in each process (on SIGUSR1). Then every line of their
captured stdout and stderr must parse as a JSON object, and each query of the "Log analysis"
block runs as written through the real ``jq``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from aegis_site.core.audit import Actor
from aegis_site.core.models import RoleHeartbeat
from registry.models import Agent
from tasks import actions as task_actions
from tasks.engine.submit import JobSpec
from tasks.models import Job, JobState
from tests.roles import ROOT, Roles, request
from tests.support import envelope, wait_for
from tests.test_bridge import FakeAgent, broker_reachable

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883"),
    pytest.mark.skipif(shutil.which("jq") is None, reason="no jq (.ci/run installs it)"),
    pytest.mark.timeout(240),
]

ROLES = ("web", "bridge", "dispatcher")

# Loaded by every role process (PYTHONPATH): on SIGUSR1 it warns, and raises in a thread of its own.
FAULTS = """
import signal, threading, warnings

def _raise():
    raise RuntimeError("injected failure in a thread")

def _fault(signum, frame):
    warnings.warn("injected warning", RuntimeWarning)
    threading.Thread(target=_raise, name="injected-fault").start()

signal.signal(signal.SIGUSR1, _fault)
"""


@pytest.fixture
def roles(transactional_db: Any, tmp_path: Path) -> Iterator[Roles]:
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(FAULTS)
    env = {"LOG_FORMAT": "json", "PYTHONPATH": str(faults)}
    running = Roles(tmp_path)
    try:
        running.start("bridge", [sys.executable, "manage.py", "run_bridge"], **env)
        running.start("dispatcher", [sys.executable, "manage.py", "run_dispatcher"], **env)
        # SLOW_REQUEST_MS: every request counts as slow, so that the slow_request query has lines to find.
        # API_THROTTLE_AUTH_FAILURES: the limit after 3 failed tokens instead of 20.
        running.web(**env, SLOW_REQUEST_MS="0.001", API_THROTTLE_AUTH_FAILURES="3/min")
        wait_for(
            lambda: {"bridge", "dispatcher"} <= set(RoleHeartbeat.objects.values_list("role", flat=True)),
            "the bridge and the dispatcher to report",
            timeout=60,
            interval=0.2,
        )
        yield running
    finally:
        running.stop()


def test_every_line_is_json_and_every_documented_query_finds_its_event(roles: Roles, tmp_path: Path) -> None:
    web = roles.web_url
    # Failed authentications, then the rate limit on them.
    statuses = [request(web, "GET", "/api/v1/agent/me/", token="aeg_" + "x" * 43)[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]

    # A 500: the enrolment view's table is gone under the running web role.
    request_id = "logtest-" + uuid.uuid4().hex
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE enrolment_tokens RENAME TO enrolment_tokens_away")
    try:
        status, _ = _request_with_id(web, request_id)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE enrolment_tokens_away RENAME TO enrolment_tokens")
    assert status == 500

    # A task's life over MQTT (the dispatcher assigns, the bridge applies), and a message the bridge drops.
    agent = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    try:
        agent.hello()
        wait_for(lambda: Agent.objects.filter(pk=agent.id, connectivity="online").exists(), "the MQTT hello")
        job, _ = task_actions.submit_job(JobSpec(kind="echo", target_agent_ids=[agent.id]), Actor("tester"))
        assignment = agent.next_message(timeout=30)
        while assignment["type"] != "task.assign":
            assignment = agent.next_message(timeout=30)
        task_id, attempt = assignment["task"]["id"], assignment["task"]["attempt"]
        agent.send("events", envelope("task.accepted", task_id=task_id, attempt=attempt))
        agent.send("events", envelope("task.succeeded", task_id=task_id, attempt=attempt, result={"ok": True}))
        agent.send("events", b"this is not JSON")
        wait_for(lambda: Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED, "the job to succeed")
        wait_for(lambda: "mqtt message dropped" in roles.log("bridge"), "the bridge to drop the bad message")
    finally:
        agent.close()

    # A warning and an exception in a thread, in each process.
    for name in ROLES:
        roles.processes[name].send_signal(signal.SIGUSR1)
    for name in ROLES:
        wait_for(partial(_logged, roles, name, "injected failure"), f"the injected fault in {name}")

    roles.stop()  # the shutdown lines too
    logs = {name: tmp_path / f"{name}.log" for name in ROLES}
    records = {name: _json_lines(path) for name, path in logs.items()}

    for name in ROLES:
        warned = [r for r in records[name] if "injected warning" in str(r.get("event"))]
        assert warned, f"{name}: no warning line"
        assert warned[0]["level"] == "warning"
        failed = [r for r in records[name] if r.get("event") == "uncaught exception in thread"]
        assert failed, f"{name}: no line for the thread's exception"
        assert "injected failure in a thread" in failed[0]["exception"]

    (error,) = [r for r in records["web"] if r.get("logger") == "django.request" and r.get("status_code") == 500]
    assert error["request_id"] == request_id
    assert "enrolment_tokens" in error["exception"]
    assert any(r.get("event") == "request" and r.get("status") == 500 for r in records["web"])  # the access log
    assigned = [
        r for r in records["dispatcher"] if r.get("logger") == "aegis.transitions" and r.get("task_id") == task_id
    ]
    assert [(r["from_state"], r["to_state"], r["agent_id"]) for r in assigned] == [("queued", "assigned", agent.id)]

    found = _run_documented_queries(logs, request_id, task_id)
    transitions = [json.loads(line) for line in found["task"].splitlines()]  # in time order (the doc sorts)
    assert [(t["from_state"], t["to_state"]) for t in transitions] == [
        ("queued", "assigned"),
        ("assigned", "running"),
        ("running", "succeeded"),
    ]


def _logged(roles: Roles, name: str, text: str) -> bool:
    return text in roles.log(name)


def _request_with_id(web: str, request_id: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    body = json.dumps({"enrolment_token": "aen_" + uuid.uuid4().hex, "agent_id": "edge-500"}).encode()
    headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
    call = urllib.request.Request(f"{web}/api/v1/agent/enrol/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(call, timeout=30) as response:  # nosec B310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), f"{path.name}:{number} is not a JSON object: {line[:300]!r}"
        records.append(record)
    assert records, f"{path.name} is empty"
    return records


def documented_queries() -> list[str]:
    """The command lines of the "Log analysis" block of docs/operations.md, as written."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Log analysis\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the Log analysis section"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _run_documented_queries(logs: dict[str, Path], request_id: str, task_id: int) -> dict[str, str]:
    """Runs each documented query with bash and jq on the captured logs; each must print something."""
    every_log = " ".join(f'"{path}"' for path in logs.values())
    # The docs' stand-ins: the log source, an example request id and task id.
    stand_ins = {
        "journalctl -u aegis-web -o cat |": f'cat "{logs["web"]}" |',
        "... |": f"cat {every_log} |",
        '"6f1c..."': f'"{request_id}"',
        ".task_id == 41": f".task_id == {task_id}",
    }
    found = {}
    queries = documented_queries()
    assert len(queries) >= 6
    for query in queries:
        command = query
        for text, value in stand_ins.items():
            command = command.replace(text, value)
        assert command.startswith("cat "), f"unknown log source in {query!r}"
        done = subprocess.run(  # nosec B603 B607
            ["bash", "-c", f"set -euo pipefail; {command}"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"{query}\n{done.stderr}"
        assert done.stdout.strip(), f"found nothing: {query}"
        found[_label(query)] = done.stdout
    return found


def _label(query: str) -> str:
    return "task" if ".task_id ==" in query else query
