"""``manage.py run_all`` as a user runs it (``make run``): default settings, its own SQLite file in a fresh
``DATA_DIR``, the embedded broker, three simulated agents; only the ports are free ones.

A killed simulated-agents process is restarted while the web role keeps answering; SIGTERM stops every role
and exits 0; every line of the stream is one format, and says what a newcomer needs once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
AGENTS = 3
# What a user's shell passes on: no DATABASE_URL, MQTT_URL, SECRET_KEY, LOG_FORMAT of the surrounding test run.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
PLAIN_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \S")
ROLES = ("broker", "web", "dispatcher", "bridge", "notifier", "agents")
STARTED = re.compile(r" INFO aegis\.allinone started (\w+) pid=(\d+) ")


@dataclass
class RunAll:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    database: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self, role: str) -> list[int]:
        """The pid of every start of ``role``, from the supervisor's ``started ... pid=`` lines."""
        return [int(pid) for name, pid in STARTED.findall(self.output()) if name == role]

    def announced(self, start: int) -> bool:
        """The simulator said "all N agents online" after the ``start``-th start of the agents role."""
        output = self.output()
        starts = [match.end() for match in STARTED.finditer(output) if match.group(1) == "agents"]
        return len(starts) >= start and f"all {AGENTS} agents online" in output[starts[start - 1] :]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"run_all exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        return True

    def agents_online_since(self, since: datetime) -> int:
        """Simulated agents online whose last message the bridge applied after ``since``."""
        try:
            with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)) as db:
                rows = db.execute(
                    "SELECT last_seen_at FROM agents WHERE id LIKE 'demo-%' AND connectivity = 'online'"
                ).fetchall()
        except sqlite3.OperationalError:  # not migrated yet, or briefly locked
            return 0
        seen = [datetime.fromisoformat(str(value)).replace(tzinfo=UTC) for (value,) in rows if value]
        return sum(1 for at in seen if at > since)


def user_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return env | {"DJANGO_SETTINGS_MODULE": "aegis_site.settings", "DATA_DIR": str(data_dir)} | extra


@contextmanager
def run_all(tmp_path: Path, agents: int = AGENTS, **env: str) -> Iterator[RunAll]:
    """Start run_all in a session of its own; on the way out SIGKILL whatever of it is left (the test failed)."""
    data_dir, port = tmp_path / "data", free_port()
    command = [sys.executable, "manage.py", "run_all", "--port", str(port), "--broker-port", str(free_port())]
    command += ["--agents", str(agents)]
    log = tmp_path / "run_all.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=user_env(data_dir, PYTHONUNBUFFERED="1", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunAll(proc, log, port, data_dir / "aegis.sqlite3")
    try:
        yield running
    finally:
        leftovers = [pid for role in ROLES for pid in running.started(role)]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in leftovers:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop(running: RunAll) -> int:
    """SIGTERM to run_all alone (its roles run in process groups of their own), as ``kill PID`` would."""
    pids = {role: running.started(role) for role in ROLES}
    running.proc.send_signal(signal.SIGTERM)
    code = running.proc.wait(60)
    left = {role: [pid for pid in role_pids if not gone(pid)] for role, role_pids in pids.items()}
    assert not any(left.values()), f"roles still running after run_all exited: {left}"
    return code


def test_a_killed_agents_process_is_restarted_while_the_web_role_keeps_answering(tmp_path):
    with run_all(tmp_path) as running:
        login = f"http://127.0.0.1:{running.port}/admin/login/"
        start = datetime.now(UTC)
        wait_for(lambda: running.alive() and http_status(login) == 200, "the admin login page", timeout=120)
        wait_for(lambda: running.alive() and running.announced(1), "the simulator's agents online", timeout=90)
        wait_for(
            lambda: running.alive() and running.agents_online_since(start) == AGENTS, "the agents online", timeout=90
        )
        (web,) = running.started("web")
        (agents,) = running.started("agents")

        os.kill(agents, signal.SIGKILL)
        wait_for(lambda: gone(agents), "the agents process gone", timeout=30)
        assert http_status(login) == 200  # the web role answers while the agents are down
        assert http_status(f"http://127.0.0.1:{running.port}/healthz/ready") == 200

        wait_for(lambda: running.alive() and len(running.started("agents")) == 2, "the agents restarted", timeout=60)
        restarted = running.started("agents")[1]
        assert restarted != agents
        assert psutil.Process(restarted).is_running()
        # The new process connected its agents (a line after its start: the killed one writes nothing more) ...
        wait_for(lambda: running.alive() and running.announced(2), "the restarted agents online", timeout=90)
        # ... and the bridge applies their messages: online in the database, seen after that.
        announced = datetime.now(UTC)
        wait_for(
            lambda: running.alive() and running.agents_online_since(announced) == AGENTS,
            "the restarted agents online in the database",
            timeout=90,
        )
        assert running.started("web") == [web]  # never restarted: it kept running
        assert http_status(login) == 200
        output = running.output()
        assert "agents exited (signal SIGKILL)" in output

        assert stop(running) == 0

    output = running.output()
    assert "every role stopped" in output.splitlines()[-1]
    lines = output.splitlines()
    assert lines, "run_all wrote nothing"
    odd = [line for line in lines if not PLAIN_LINE.match(line)]
    assert not odd, "lines not in the plain log format:\n" + "\n".join(odd)
    assert sum("aegis.W001" in line for line in lines) == 1  # the SECRET_KEY warning, from run_all alone
    assert sum("Admin login: user 'admin', password" in line for line in lines) == 1
    # The restarted agents do not take one another's retained status (or anything else) for a command.
    assert "dropped invalid message" not in output
    assert not [line for line in lines if re.search(r" (WARNING|ERROR|CRITICAL) aegis_agent\.", line)]
    assert f"all {AGENTS} agents online" in output


def test_log_format_json_makes_every_line_json_the_supervisor_and_the_agents_included(tmp_path):
    with run_all(tmp_path, agents=1, LOG_FORMAT="json") as running:
        wait_for(lambda: running.alive() and "all 1 agents online" in running.output(), "the agent online", timeout=120)
        wait_for(lambda: running.alive() and "bridge connected" in running.output(), "the bridge", timeout=60)
        assert stop(running) == 0
    records = []
    for line in running.output().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all({"event", "logger", "level", "timestamp"} <= record.keys() for record in records)
    loggers = {record["logger"] for record in records}
    assert {"aegis.allinone", "aegis_agent.simulate", "aegis.bridge", "daphne.server"} <= loggers
    assert sum(record.get("check") == "aegis.W001" for record in records) == 1
    started = [record for record in records if record["event"] == "started agents"]
    assert len(started) == 1
    assert isinstance(started[0]["pid"], int)


def test_a_port_in_use_is_named_and_nothing_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "manage.py", "run_all", "--port", str(port), "--broker-port", str(free_port())]
        result = subprocess.run(
            command, cwd=REPO, env=user_env(tmp_path / "data"), capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 1
    assert f"already in use: 127.0.0.1:{port} (PORT=)" in result.stderr
    assert "make run PORT=" in result.stderr
    assert "started " not in result.stderr
    assert all(PLAIN_LINE.match(line) for line in result.stderr.splitlines())


def test_make_run_passes_port_and_broker_port_on():
    result = subprocess.run(
        ["make", "-n", "run", "PORT=8123", "BROKER_PORT=18999"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "manage.py run_all --port 8123 --broker-port 18999" in result.stdout


def test_a_system_check_error_is_a_log_line_and_nothing_starts(tmp_path):
    command = [sys.executable, "manage.py", "run_all", "--port", str(free_port()), "--broker-port", str(free_port())]
    env = user_env(tmp_path / "data", JWT_SIGNING_KEY="short")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(
        " ERROR aegis.allinone JWT_SIGNING_KEY is 5 bytes" in line and "check=aegis.E003" in line for line in lines
    )
    assert " CRITICAL aegis.allinone system check errors; not starting checks=aegis.E003" in result.stderr
    assert "started " not in result.stderr
    assert all(PLAIN_LINE.match(line) for line in lines), result.stderr


@pytest.mark.django_db
def test_view_site_leads_to_the_api_docs_and_the_bare_address_to_the_admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("operator", password="unused-password-1"))
    index = client.get("/admin/")
    assert b'<a href="/api/docs/">View site</a>' in index.content
    assert client.get("/api/docs/").status_code == 200
    root = client.get("/")
    assert (root.status_code, root["Location"]) == (302, "/admin/")
