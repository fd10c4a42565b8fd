"""The web, dispatcher and bridge roles as separate processes on the test database, with production defaults.

Each process gets the test run's PostgreSQL database (the pool on, as in
production), ``DEBUG`` off and plain HTTP (TLS would be nginx's). The test
process talks to them over real sockets only: HTTP to daphne, MQTT through the
machine's Mosquitto (127.0.0.1:1883).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.db import connection

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
DAPHNE = str(Path(sys.executable).parent / "daphne")
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV")


def database_url() -> str:
    """The URL of the database this test runs on (pytest-django's test database)."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def web_command(host: str, port: int) -> list[str]:
    """daphne as the image runs it (the Dockerfile's ``CMD``, options and all), on ``host:port``."""
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = [DAPHNE if arg == "daphne" else arg for arg in json.loads(cmd.removeprefix("CMD "))]
    argv[argv.index("-b") + 1] = host
    argv[argv.index("-p") + 1] = str(port)
    return argv


def role_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return (
        env
        | {
            "DJANGO_SETTINGS_MODULE": "aegis_site.settings",
            "DATABASE_URL": database_url(),
            "DATA_DIR": str(data_dir),
            "DEBUG": "0",
            "SECRET_KEY": "test-" + uuid.uuid4().hex,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "HTTPS_ONLY": "0",
            "MQTT_URL": "mqtt://127.0.0.1:1883",
            "MQTT_SHARE_GROUP": f"t{uuid.uuid4().hex[:8]}",  # other bridges on this broker don't take our messages
            "MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:8]}",
            "ROLE_HEARTBEAT_INTERVAL": "1",
            "LOG_FORMAT": "plain",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )


class Roles:
    """Starts role processes; ``stop`` ends each of them (SIGTERM, then SIGKILL) and prints their logs."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.web_url = ""

    def start(self, name: str, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(  # nosec B603
                argv, cwd=ROOT, env=role_env(self.data_dir, **extra), stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def web(self, **extra: str) -> str:
        """daphne, as the web Deployment runs it; returns its base URL once ``/healthz`` answers.

        A free port can be taken by another process between the probe and daphne's bind (other tests, a
        benchmark): then daphne exits "Address already in use" and another port is tried.
        """
        for _attempt in range(5):
            port = free_port()
            self.start("web", web_command("127.0.0.1", port), **extra)
            self.web_url = f"http://127.0.0.1:{port}"
            wait_for(self._exited_or_healthy, "daphne to answer /healthz", timeout=60, interval=0.2)
            if self.processes["web"].poll() is None:
                return self.web_url
            if "Address already in use" not in self.log("web"):
                break
        self.alive("web")  # fails, with daphne's log
        return self.web_url

    def _exited_or_healthy(self) -> bool:
        return self.processes["web"].poll() is not None or self._healthy()

    def dispatcher(self) -> None:
        self.start("dispatcher", [sys.executable, "manage.py", "run_dispatcher"])

    def bridge(self) -> None:
        self.start("bridge", [sys.executable, "manage.py", "run_bridge"])

    def alive(self, name: str) -> bool:
        process = self.processes[name]
        assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
        return True

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-20_000:] if path.exists() else ""

    def _healthy(self) -> bool:
        try:
            return request(self.web_url, "GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            print(f"--- {name} (exit {process.returncode}) ---\n{self.log(name)}")


def request(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    token: str = "",
    timeout: float = 30,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request as curl would send it; returns the status and the decoded JSON body (or the text)."""
    headers = {"Accept": "application/json", **(extra_headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:  # nosec B310 (loopback)
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")
