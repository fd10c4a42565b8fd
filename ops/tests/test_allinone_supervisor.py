"""run_all's supervisor restarts any role that exits (with backoff), and stops them all only when told to."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ops.allinone import RESTART_BACKOFF_CAP, RESTART_RESET_AFTER, Supervisor, exit_description, role_commands
from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]

FAILS = [sys.executable, "-c", "import sys; sys.exit(1)"]
SLEEPS = [sys.executable, "-c", "import time; time.sleep(60)"]
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def exits_on_sigterm(marker: Path, name: str) -> list[str]:
    """A role that writes its name to ``marker`` when SIGTERM arrives, then exits."""
    code = (
        "import signal, sys, time\n"
        f"def stop(*_):\n    open({str(marker)!r}, 'a').write({name!r} + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    return [sys.executable, "-c", code]


class Running:
    """``Supervisor.run`` on a thread (the test's main thread keeps its signal handlers); ``result``: its return."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.result: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.supervisor.run()

    def stop(self) -> int | None:
        self.supervisor.stopping = True
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.result


def test_a_role_that_exits_is_restarted_and_the_others_keep_running():
    supervisor = Supervisor({"agents": FAILS, "web": SLEEPS})
    running = Running(supervisor)
    try:
        wait_for(lambda: "web" in supervisor.procs, "the roles started", timeout=30)
        web = supervisor.procs["web"]
        wait_for(lambda: supervisor.restarts.get("agents", 0) >= 2, "two restarts of the agents", timeout=60)
        assert supervisor.procs["web"] is web
        assert web.poll() is None
    finally:
        assert running.stop() == 0  # stopped on request: exit status 0
    assert web.poll() is not None  # stopped with the rest


def test_any_role_is_restarted_a_dead_web_role_included():
    supervisor = Supervisor({"web": FAILS, "bridge": SLEEPS})
    running = Running(supervisor)
    try:
        wait_for(lambda: supervisor.restarts.get("web", 0) >= 2, "two restarts of the web role", timeout=60)
        assert supervisor.procs["bridge"].poll() is None
    finally:
        assert running.stop() == 0
    assert supervisor.procs["bridge"].poll() is not None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_backoff_doubles_up_to_a_cap_and_starts_over_after_a_healthy_run():
    clock = Clock()
    supervisor = Supervisor({"agents": FAILS}, clock=clock)
    exited = subprocess.Popen(FAILS)
    exited.wait()

    def exits_after(seconds: float) -> float:
        supervisor.started_at["agents"] = clock.now - seconds
        supervisor.check("agents", exited)
        return supervisor.restart_at.pop("agents") - clock.now

    assert [exits_after(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, RESTART_BACKOFF_CAP, RESTART_BACKOFF_CAP]
    assert exits_after(RESTART_RESET_AFTER) == 1  # it ran long enough: a new crash starts from 1 s
    assert exits_after(0.5) == 2
    assert supervisor.restarts["agents"] == 9


def test_a_restart_waits_for_its_backoff():
    clock = Clock()
    supervisor = Supervisor({"agents": SLEEPS}, clock=clock)
    exited = subprocess.Popen(FAILS)
    exited.wait()
    supervisor.procs["agents"] = exited
    supervisor.started_at["agents"] = clock.now
    supervisor.check("agents", exited)  # first exit: 1 s
    clock.now += 0.9
    supervisor.check("agents", exited)
    assert supervisor.procs["agents"] is exited  # not yet
    clock.now += 0.2
    supervisor.check("agents", exited)
    try:
        assert supervisor.procs["agents"] is not exited
        assert supervisor.procs["agents"].poll() is None
    finally:
        supervisor.stop()


def test_stopping_ends_the_broker_last_and_kills_a_role_that_ignores_sigterm(tmp_path):
    marker = tmp_path / "stopped"
    ignores = [sys.executable, "-c", IGNORES_SIGTERM]
    commands = {"broker": exits_on_sigterm(marker, "broker"), "agents": exits_on_sigterm(marker, "agents")}
    supervisor = Supervisor(commands | {"stubborn": ignores}, stop_timeout=2)
    for name, command in supervisor.commands.items():
        supervisor.procs[name] = subprocess.Popen(command, stdout=subprocess.PIPE)
    for proc in supervisor.procs.values():
        assert proc.stdout.readline() == b"ready\n"  # its SIGTERM handler is set
    supervisor.stop()
    assert marker.read_text().split() == ["agents", "broker"]
    assert supervisor.procs["stubborn"].returncode == -signal.SIGKILL
    for proc in supervisor.procs.values():
        proc.stdout.close()


def test_exits_are_described_by_status_or_signal():
    assert exit_description(1) == "status 1"
    assert exit_description(-9) == "signal SIGKILL"


def test_make_run_keeps_the_sqlite_files_and_data_dir_private(tmp_path):
    """``make run`` as a user runs it (``manage.py migrate``, then ``run_all``; umask 022): nothing others can read."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env |= {
        "DJANGO_SETTINGS_MODULE": "aegis_site.settings",
        "DATA_DIR": str(data_dir),  # no DATABASE_URL: the all-in-one's own SQLite file in DATA_DIR
        "MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",  # no broker: the web role alone is what this test needs
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, "manage.py"]

    subprocess.run([*manage, "migrate", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True, umask=0o022)
    command = [*manage, "run_all", "--no-migrate", "--agents", "0", "--port", str(port)]
    with (tmp_path / "run_all.log").open("wb") as log:
        run_all = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o022,
        )
    try:
        database = data_dir / "aegis.sqlite3"
        wal, shm = database.with_name("aegis.sqlite3-wal"), database.with_name("aegis.sqlite3-shm")
        wait_for(lambda: ready(port) and wal.exists() and shm.exists(), "web serving from its SQLite file", timeout=90)
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (data_dir, database, wal, shm)}
        assert modes == {"data": 0o700, "aegis.sqlite3": 0o600, "aegis.sqlite3-wal": 0o600, "aegis.sqlite3-shm": 0o600}
    finally:
        os.killpg(run_all.pid, signal.SIGTERM)
        run_all.wait(30)


def ready(port: int) -> bool:
    """``/healthz/ready`` answers 200: the web role has opened the database."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_the_roles_share_run_alls_log_format_broker_port_and_development_key(settings, monkeypatch, tmp_path):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    settings.MQTT_URL, settings.MQTT_CA_FILE = "", ""
    settings.SECRET_KEY_IS_GENERATED, settings.DATA_DIR = True, tmp_path
    commands, env = role_commands("127.0.0.1", 8001, 3, broker_port=18831)
    assert env["LOG_FORMAT"] == "plain"
    assert env["SECRET_KEY_FILE"] == str(tmp_path / ".dev_secret_key")  # the roles warn about no key of theirs
    assert env["MQTT_URL"] == "mqtt://127.0.0.1:18831"
    assert commands["broker"][-2:] == ["--port", "18831"]
    assert commands["agents"][commands["agents"].index("--port") + 1] == "18831"
    assert "8001" in commands["web"]

    monkeypatch.setenv("LOG_FORMAT", "json")
    settings.SECRET_KEY_IS_GENERATED = False
    _commands, env = role_commands("127.0.0.1", 8001, 3)
    assert env["LOG_FORMAT"] == "json"
    assert "SECRET_KEY_FILE" not in env


def test_a_second_signal_kills_at_once_what_is_still_running():
    supervisor = Supervisor({"stubborn": [sys.executable, "-c", IGNORES_SIGTERM]}, stop_timeout=600)
    supervisor.procs["stubborn"] = subprocess.Popen(supervisor.commands["stubborn"], stdout=subprocess.PIPE)
    assert supervisor.procs["stubborn"].stdout.readline() == b"ready\n"
    supervisor.on_signal(signal.SIGINT)
    assert (supervisor.stopping, supervisor.force) == (True, False)
    supervisor.on_signal(signal.SIGINT)  # Ctrl-C again
    assert supervisor.force
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 600  # did not wait for stop_timeout
    assert supervisor.procs["stubborn"].returncode == -signal.SIGKILL
    supervisor.procs["stubborn"].stdout.close()
