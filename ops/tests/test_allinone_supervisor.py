"""run_all's supervisor restarts a bridge or dispatcher that gave up, and stops everything when another role dies."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ops.allinone import Supervisor
from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]

FAILS = [sys.executable, "-c", "import sys; sys.exit(1)"]
SLEEPS = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_role_that_gave_up_is_restarted_and_the_others_keep_running():
    supervisor = Supervisor({"dispatcher": FAILS, "web": SLEEPS})
    runner = threading.Thread(target=supervisor.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: supervisor.restarts.get("dispatcher", 0) >= 2, "two restarts", timeout=60)
        assert supervisor.procs["web"].poll() is None
    finally:
        supervisor.stopping = True
        runner.join(30)
    assert supervisor.procs["web"].poll() is not None  # stopped with the rest


def test_any_other_role_dying_stops_everything():
    supervisor = Supervisor({"web": FAILS, "bridge": SLEEPS})
    assert supervisor.run() == 1
    assert supervisor.procs["bridge"].poll() is not None


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
