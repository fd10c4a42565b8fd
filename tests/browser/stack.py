"""The real control plane for the browser tests, started the way a user starts it: ``manage.py run_all``.

Every role (daphne, bridge, dispatcher, three simulated agents) is a separate
process under run_all's supervisor, with its own fresh SQLite database and
``DATA_DIR`` in a temporary directory.

Why SQLite and not the run's PostgreSQL: SQLite is what ``make run`` gives a
user, a fresh file leaves nothing behind when a run is killed, and it cannot
collide with the test databases of a parallel run. ``DATABASE_URL`` is always set
explicitly, so a PostgreSQL URL of the surrounding test run does not leak in.

Why a broker of its own on a free port: run_all's embedded broker listens on a
fixed port (18830), so two stacks on one machine (a developer's ``make run`` and
a test run) would share it, and with it the agents' topics. Starting the same
embedded broker (``run_embedded_broker``) on a free port and handing it over
as ``MQTT_URL`` keeps every other role exactly as run_all starts them.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
AGENTS = 3
AGENT_PREFIX = "demo-"  # run_all's simulated agents are demo-0 .. demo-2

# What a user's shell would pass on; everything else (DATABASE_URL, MQTT_*, REDIS_URL,
# SECRET_KEY, DEBUG ... of the surrounding test run) stays out of the stack.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV")


@dataclass
class Stack:
    """A running control plane: where it listens, how to log in, where its database is."""

    url: str
    data_dir: Path
    database: Path
    logs: Path
    username: str = "admin"
    password: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_files: list[IO[bytes]] = field(default_factory=list)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the stack's database directly (read-only), to check what the pages claim."""
        with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)) as db:
            return db.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def log_tail(self, lines: int = 60) -> str:
        text = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(text)


def stack_env(data_dir: Path, mqtt_port: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return env | {
        "DJANGO_SETTINGS_MODULE": "aegis_site.settings",
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": f"sqlite:///{data_dir / 'aegis.sqlite3'}",
        "MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
        "MQTT_PROTOCOL": "3.1.1",  # the embedded broker (amqtt) speaks 3.1.1 only
        "LOG_FORMAT": "plain",
        "PYTHONUNBUFFERED": "1",
    }


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # our own loopback URL
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def spawn(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one process in a session of its own, so that teardown can kill the whole group it forks."""
    log = (stack.logs / f"{name}.log").open("wb")
    stack.log_files.append(log)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.procs.append(proc)
    return proc


def alive(stack: Stack) -> bool:
    dead = [proc.args for proc in stack.procs if proc.poll() is not None]
    if dead:
        raise AssertionError(f"a stack process exited during start-up: {dead}\n{stack.log_tail()}")
    return True


def stop(stack: Stack, grace: float = 15.0) -> None:
    """Stop run_all (it passes SIGTERM on to its roles), then the broker; SIGKILL a group still there after ``grace``.

    One after the other: with the broker gone first, the bridge spends its whole
    stop timeout reconnecting before run_all kills it.
    """
    for proc in reversed(stack.procs):  # run_all first, the broker last
        signal_group(proc, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        signal_group(proc, signal.SIGKILL)  # also reaps roles that outlived their supervisor
        proc.wait()
    for log in stack.log_files:
        log.close()


def signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


@contextmanager
def running_stack(data_dir: Path, logs: Path) -> Iterator[Stack]:
    """Start broker + run_all, wait until the admin answers and every simulated agent is online; always tear down."""
    web_port, mqtt_port = free_port(), free_port()
    env = stack_env(data_dir, mqtt_port)
    stack = Stack(url=f"http://127.0.0.1:{web_port}", data_dir=data_dir, database=data_dir / "aegis.sqlite3", logs=logs)
    manage = [sys.executable, str(REPO / "manage.py")]
    try:
        spawn(stack, "broker", [*manage, "run_embedded_broker", "--port", str(mqtt_port)], env)
        wait_for(lambda: alive(stack) and port_open(mqtt_port), "the embedded MQTT broker", timeout=30)
        spawn(stack, "run_all", [*manage, "run_all", "--port", str(web_port), "--agents", str(AGENTS)], env)
        wait_for(lambda: alive(stack) and healthy(stack.url), f"{stack.url}/healthz", timeout=90, interval=0.3)
        stack.password = (data_dir / "admin_password.txt").read_text().strip()
        wait_for(
            lambda: alive(stack) and online_agents(stack) == AGENTS,
            f"{AGENTS} simulated agents online",
            timeout=60,
            interval=0.3,
        )
        yield stack
    finally:
        stop(stack)


def online_agents(stack: Stack) -> int:
    try:
        return int(stack.scalar("SELECT COUNT(*) FROM agents WHERE connectivity = 'online'") or 0)
    except sqlite3.OperationalError:  # not migrated yet, or briefly locked
        return 0
