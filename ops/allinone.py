"""The all-in-one mode: every role of the control plane as child processes of one command."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess  # nosec B404  # starts this project's own role processes
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model

log = logging.getLogger("aegis.allinone")


def ensure_admin(username: str = "admin") -> tuple[str, str | None]:
    """Create a superuser on first start; its password is kept in ``DATA_DIR`` so later starts can print it."""
    user_model = get_user_model()
    password_file = Path(settings.DATA_DIR) / "admin_password.txt"
    if user_model.objects.filter(username=username).exists():
        return username, password_file.read_text().strip() if password_file.exists() else None
    password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser(username=username, email="", password=password)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return username, password


def restrict_data_files() -> None:
    """``DATA_DIR`` 0700, the SQLite database and its ``-wal``/``-shm`` 0600: they hold session keys and password
    hashes, and SQLite would create them 0644 (the umask's default), readable by every user of the machine.

    The database file is created here, 0600, when it does not exist yet: SQLite then gives its ``-wal`` and
    ``-shm`` the same mode. A ``DATA_DIR`` this process does not own is left as it is (logged).
    """
    data_dir = Path(settings.DATA_DIR)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
    except OSError as exc:
        log.warning("cannot make DATA_DIR %s private (0700): %s", data_dir, exc.strerror or exc)
    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("sqlite3") or str(database["NAME"]) == ":memory:":
        return
    path = Path(database["NAME"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        if file.exists():
            file.chmod(0o600)


# Roles that exit non-zero when they cannot do their job (ROLE_MAX_FAILED_STEPS): restarted, like a supervisor would.
RESTARTED_ROLES = frozenset({"dispatcher", "bridge"})
RESTART_BACKOFF_CAP = 30.0


@dataclass
class Supervisor:
    """Starts the roles; restarts a bridge or dispatcher that exited non-zero (with backoff); stops them all on
    SIGTERM/SIGINT or when another role dies."""

    commands: dict[str, list[str]]
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: bool = False
    restarts: dict[str, int] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        for name in self.commands:
            self.start_role(name)

    def start_role(self, name: str) -> None:
        command = self.commands[name]
        self.procs[name] = subprocess.Popen(command, cwd=Path(settings.BASE_DIR), env={**os.environ, **self.env})  # noqa: S603  # nosec B603  # argv from role_commands(), no shell
        log.info("started %s (pid %d): %s", name, self.procs[name].pid, " ".join(command))

    def check(self, name: str, proc: subprocess.Popen[bytes]) -> int | None:
        """None while the role runs or waits for its restart; an exit code when everything must stop."""
        if name in self.restart_at:
            if time.monotonic() >= self.restart_at.pop(name):
                self.start_role(name)
            return None
        if proc.poll() is None:
            return None
        if name in RESTARTED_ROLES and proc.returncode not in (0, None):
            self.restarts[name] = self.restarts.get(name, 0) + 1
            delay = min(2.0 ** (self.restarts[name] - 1), RESTART_BACKOFF_CAP)
            log.error("%s exited with %s; restarting it in %.0fs", name, proc.returncode, delay)
            self.restart_at[name] = time.monotonic() + delay
            return None
        log.error("%s exited with %s; stopping everything", name, proc.returncode)
        return proc.returncode or 1

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: setattr(self, "stopping", True))
        self.start()
        exit_code = 0
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                code = self.check(name, proc)
                if code is not None:
                    exit_code = code
                    self.stopping = True
                    break
            time.sleep(0.2)
        self.stop()
        return exit_code

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()


EMBEDDED_BROKER_PORT = 18830


def role_commands(host: str, port: int, agents: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The command of every role, and the environment they share.

    Without ``MQTT_URL`` an embedded broker (amqtt, MQTT 3.1.1) is started on
    loopback and every role is pointed at it.
    """
    python, manage = sys.executable, str(Path(settings.BASE_DIR) / "manage.py")
    commands: dict[str, list[str]] = {}
    env: dict[str, str] = {"LOG_FORMAT": os.environ.get("LOG_FORMAT", "plain")}
    mqtt_url = settings.MQTT_URL
    if not mqtt_url:
        mqtt_url = f"mqtt://127.0.0.1:{EMBEDDED_BROKER_PORT}"
        env |= {"MQTT_URL": mqtt_url, "MQTT_PROTOCOL": "3.1.1"}
        commands["broker"] = [python, manage, "run_embedded_broker", "--port", str(EMBEDDED_BROKER_PORT)]
    commands["web"] = [python, "-m", "daphne", "-v", "0", "-b", host, "-p", str(port), "aegis_site.asgi:application"]
    commands["dispatcher"] = [python, manage, "run_dispatcher"]
    commands["bridge"] = [python, manage, "run_bridge"]
    if agents and not settings.MQTT_CA_FILE:
        broker = urlsplit(mqtt_url)
        mqtt_version = "311" if env.get("MQTT_PROTOCOL", settings.MQTT_PROTOCOL) == "3.1.1" else "5"
        commands["agents"] = [python, "-m", "aegis_agent.simulate", "--count", str(agents), "--prefix", "demo-"]
        commands["agents"] += ["--host", broker.hostname or "127.0.0.1", "--port", str(broker.port or 1883)]
        commands["agents"] += ["--mqtt-version", mqtt_version, "--duration-ms", "1500", "--heartbeat-s", "5"]
    return commands, env
