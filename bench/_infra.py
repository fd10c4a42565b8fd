"""What the end-to-end benchmarks share: a scratch database, a private Mosquitto, child processes, percentiles.

Every process started here is registered in ``Processes`` and stopped by its
``stop_all`` (SIGTERM, then SIGKILL after a grace period), which the scripts call
in ``finally`` blocks; loads go to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/aegis"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def scratch_database_url(suffix: str) -> str:
    """Create ``<name>_<suffix>`` afresh (dropping any previous one) and return its URL."""
    import psycopg

    url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    base, _, name = url.rpartition("/")
    scratch = f"{name}_{suffix}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{scratch}"')
    return f"{base}/{scratch}"


def drop_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with contextlib.suppress(Exception), psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(database_url: str) -> None:
    """Point this process at the scratch database (production defaults: the connection pool on) and migrate it."""
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "aegis_site.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class Processes:
    """Child processes of one benchmark run; ``stop_all`` ends every one of them."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="aegis-bench-"))

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log: IO[bytes] = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.children.append((name, proc))
        return proc

    def log_of(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_of(name)[-3000:]}")

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL, no clean stop: a bridge killed this way keeps its MQTT session and what queues in it
        (a SIGTERM makes it leave the share group and end the session)."""
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def stop_all(self, failed: bool = False) -> None:
        """Stop every child; after a failure, print the tail of each child's log first."""
        if failed:
            for name, _proc in self.children:
                print(f"--- {name} log (tail) ---\n{self.log_of(name)[-2000:]}", file=sys.stderr)
        for _name, proc in reversed(list(self.children)):
            self.stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def mosquitto(self, name: str = "mosquitto") -> int:
        """A private plain broker on a free port: TCP_NODELAY, deep queues, no inflight cap, $SYS every second."""
        port = free_port()
        conf = self.tmp / f"{name}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "sys_interval 1\n"
            "log_type error\n"
            "log_type warning\n"
        )
        self.start(name, [MOSQUITTO, "-c", str(conf)])
        wait_port(port)
        return port

    def wait_log(self, name: str, text: str, timeout_s: float = 60.0) -> None:
        """Wait until a child's log shows ``text`` (e.g. the bridge's "bridge connected")."""
        wait_until(lambda: self._alive_and_logged(name, text), timeout_s, f"{text!r} in the {name} log", 0.05)

    def _alive_and_logged(self, name: str, text: str) -> bool:
        self.check_alive()
        return text in self.log_of(name)

    def django_command(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start(name, [PYTHON, "manage.py", *args], env)


_BENCH_SECRET_KEY = secrets.token_urlsafe(50)  # a fresh one per run: the roles sign nothing that outlives it


def role_env(database_url: str, port: int, tag: str, **extra: str) -> dict[str, str]:
    """The environment of the bridge and dispatcher processes a benchmark starts: production settings (pool on)."""
    return {
        "DEBUG": "false",  # DEBUG keeps every query in memory and wraps each cursor call
        "SECRET_KEY": _BENCH_SECRET_KEY,
        "DATABASE_URL": database_url,
        "MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "MQTT_SHARE_GROUP": tag,
        "MQTT_CLIENT_ID": f"{tag}-bridge",
        **extra,
    }


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Profile:
    """``py-spy record`` of a process (raw collapsed stacks, idle threads included) until ``stop``."""

    def __init__(self, procs: Processes, pid: int, path: str) -> None:
        import shutil

        spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        argv = [spy, "record", "--format", "raw", "--idle", "--rate", "100", "-o", path, "-p", str(pid)]
        self.procs, self.process = procs, procs.start("py-spy", argv)

    def stop(self) -> None:
        import signal

        self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        self.process.wait(30)
        self.procs.stop(self.process)
