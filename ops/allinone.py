"""The all-in-one mode: every role of the control plane as child processes of one command."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess  # nosec B404  # starts this project's own role processes
import sys
import threading
import time
from collections.abc import Callable
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


# A role that exits (crashed, killed, or gave up: ROLE_MAX_FAILED_STEPS) is started again after a backoff that doubles
# with each exit in a row, up to RESTART_BACKOFF_CAP; one that ran RESTART_RESET_AFTER seconds starts from 1 s again.
# It is restarted for as long as run_all runs (a dev server's supervisor, like supervisord's autorestart or
# compose's restart: always): every exit and every restart is a log line, the other roles keep running.
RESTART_BACKOFF_CAP = 30.0
RESTART_RESET_AFTER = 30.0
# Stopped after every other role: the bridge unsubscribes and the agents publish "offline" through it.
STOPPED_LAST = ("broker",)


def exit_description(returncode: int) -> str:
    """``status 1``, or ``signal SIGKILL`` for a negative ``returncode``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def _die_with_parent() -> None:  # pragma: no cover  # runs in the forked child, before exec
    """Linux: the role gets SIGTERM should run_all itself die without stopping it (SIGKILL, an OOM kill)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Supervisor:
    """Starts the roles, restarts any that exits (with backoff), stops them all on SIGTERM/SIGINT (exit status 0).

    Each role runs in a process group of its own: Ctrl-C at the terminal reaches run_all only, which then stops
    the roles in order (the broker last) instead of all at once.
    """

    commands: dict[str, list[str]]
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: bool = False
    force: bool = False  # a second SIGTERM/SIGINT: kill what is still running
    restarts: dict[str, int] = field(default_factory=dict)  # restarts per role since run_all started
    failures: dict[str, int] = field(default_factory=dict)  # exits in a row, each after less than RESTART_RESET_AFTER
    started_at: dict[str, float] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    stop_timeout: float = 10.0  # per stop phase: the roles, then the broker
    clock: Callable[[], float] = time.monotonic

    def start(self) -> None:
        for name in self.commands:
            self.start_role(name)

    def start_role(self, name: str) -> None:
        command = self.commands[name]
        self.procs[name] = subprocess.Popen(  # noqa: S603  # nosec B603  # argv from role_commands(), no shell
            command,
            cwd=Path(settings.BASE_DIR),
            env={**os.environ, **self.env},
            process_group=0,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.started_at[name] = self.clock()
        log.info("started %s", name, extra={"pid": self.procs[name].pid, "command": " ".join(command)})

    def check(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Start a role whose restart is due; schedule the restart of one that exited."""
        now = self.clock()
        if name in self.restart_at:
            if now >= self.restart_at[name]:
                del self.restart_at[name]
                self.start_role(name)
            return
        if proc.poll() is None:
            return
        ran = now - self.started_at[name]
        if ran >= RESTART_RESET_AFTER:
            self.failures[name] = 0
        self.failures[name] = self.failures.get(name, 0) + 1
        self.restarts[name] = self.restarts.get(name, 0) + 1
        delay = min(2.0 ** (self.failures[name] - 1), RESTART_BACKOFF_CAP)
        log.error(
            "%s exited (%s) after %.0fs; restarting it in %.0fs",
            name,
            exit_description(proc.returncode),
            ran,
            delay,
            extra={"pid": proc.pid, "restarts": self.restarts[name]},
        )
        self.restart_at[name] = now + delay

    def on_signal(self, signum: int, _frame: object = None) -> None:
        if self.stopping:
            self.force = True
        self.stopping = True

    def run(self) -> int:
        """Until SIGTERM/SIGINT (or ``stopping`` set by the caller); 0 once every role has stopped."""
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self.on_signal)
        self.start()
        while not self.stopping:
            for name, proc in list(self.procs.items()):
                self.check(name, proc)
            time.sleep(0.2)
        self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM to every role, the broker after the others; SIGKILL to one still running after ``stop_timeout``."""
        log.info("stopping every role")
        self.restart_at.clear()
        last = [name for name in self.procs if name in STOPPED_LAST]
        for group in ([name for name in self.procs if name not in STOPPED_LAST], last):
            for name in group:
                if self.procs[name].poll() is None:
                    self.procs[name].terminate()
            deadline = time.monotonic() + self.stop_timeout
            while any(self.procs[name].poll() is None for name in group):
                if self.force or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            for name in group:
                if self.procs[name].poll() is None:
                    log.warning("%s did not stop in time; killing it", name, extra={"pid": self.procs[name].pid})
                    self.procs[name].kill()
                    self.procs[name].wait()
        log.info("every role stopped")


EMBEDDED_BROKER_PORT = 18830
# What each role's stream looks like without LOG_FORMAT: one readable line per record (aegis_site/logs.py).
LOG_FORMAT = "plain"


def role_commands(
    host: str, port: int, agents: int, broker_port: int = EMBEDDED_BROKER_PORT
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The command of every role, and the environment they share.

    Without ``MQTT_URL`` an embedded broker (amqtt, MQTT 3.1.1) is started on loopback, ``broker_port``,
    and every role is pointed at it. Every role logs in run_all's own format (``LOG_FORMAT``, plain when unset).
    With a generated development key, the roles read it from its file (``SECRET_KEY_FILE``): the same key, and
    the ``aegis.W001`` warning about it only once, from run_all.
    """
    python, manage = sys.executable, str(Path(settings.BASE_DIR) / "manage.py")
    commands: dict[str, list[str]] = {}
    env: dict[str, str] = {"LOG_FORMAT": os.environ.get("LOG_FORMAT", LOG_FORMAT)}
    if getattr(settings, "SECRET_KEY_IS_GENERATED", False):
        env["SECRET_KEY_FILE"] = str(Path(settings.DATA_DIR).resolve() / ".dev_secret_key")
    mqtt_url = settings.MQTT_URL
    if not mqtt_url:
        mqtt_url = f"mqtt://127.0.0.1:{broker_port}"
        env |= {"MQTT_URL": mqtt_url, "MQTT_PROTOCOL": "3.1.1"}
        commands["broker"] = [python, manage, "run_embedded_broker", "--port", str(broker_port)]
    commands["web"] = [python, "-m", "daphne", "-v", "0", "-b", host, "-p", str(port), "aegis_site.asgi:application"]
    commands["dispatcher"] = [python, manage, "run_dispatcher"]
    commands["bridge"] = [python, manage, "run_bridge"]
    commands["notifier"] = [python, manage, "run_notifier"]
    if agents and not settings.MQTT_CA_FILE:
        broker = urlsplit(mqtt_url)
        mqtt_version = "311" if env.get("MQTT_PROTOCOL", settings.MQTT_PROTOCOL) == "3.1.1" else "5"
        commands["agents"] = [python, "-m", "aegis_agent.simulate", "--count", str(agents), "--prefix", "demo-"]
        commands["agents"] += ["--host", broker.hostname or "127.0.0.1", "--port", str(broker.port or 1883)]
        commands["agents"] += ["--mqtt-version", mqtt_version, "--duration-ms", "1500", "--heartbeat-s", "5"]
    return commands, env


def port_in_use(host: str, port: int) -> bool:
    """Something already listens on ``host:port`` (another ``make run``?): the role would restart forever."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daphne and amqtt bind
            probe.bind((host.strip("[]"), port))
    except OSError:
        return True
    return False
