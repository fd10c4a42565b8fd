"""run_all's supervisor restarts a bridge or dispatcher that gave up, and stops everything when another role dies."""

from __future__ import annotations

import sys
import threading

from ops.allinone import Supervisor
from tests.support import wait_for

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
