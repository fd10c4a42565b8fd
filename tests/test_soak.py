"""The CI-sized soak: ``bench/soak.py`` for 5 minutes with 200 agents in 2 simulator processes.

The soak is its own program (its own scratch database ``<name>_soak``, its own
Mosquitto, every role a process with the production defaults); this test runs it
as a subprocess, smaller than its one-hour default (200 agents instead of 1,000,
so that it fits about 6 minutes on a 2-core machine) but with every kind of fault:
a role, the broker or the database every 30-60 s, and a simulator process killed
and started again with the same agent ids every 45-90 s. It passes when the soak
exits 0: no task lost, none succeeded twice, every job finished, no process's RSS
growing through its life past the warm-up (the criterion is ``RssTrack`` in
``bench/_soak_record.py``; no timing is asserted). The per-minute CSV is written
into ``tmp_path`` and its columns checked. The seed is random and printed;
``bench/soak.py --seed N`` repeats a failed run.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BUDGET_S = 600  # 5 minutes of load, start-up and the drain; about 6 minutes on the 2-core VM
ARGS = ["--minutes", "5", "--agents", "200", "--simulators", "2"]
COLUMNS = {
    "minute",
    "utc",
    "tasks_submitted",
    "tasks_finished",
    "p50_s",
    "p95_s",
    "agents_online",
    *(f"rss_{name}_mb" for name in ("web", "bridge", "dispatcher", "sim0", "sim1", "mosquitto")),
    *(f"pg_conns_{name}" for name in ("web", "bridge", "dispatcher", "total")),
    "tasks_queued",
    "tasks_assigned",
    "tasks_running",
    "outbox_unsent",
    "notify_pending",
    *(f"{kind}_{table}" for kind in ("rows", "mb") for table in ("task_events", "task_log_chunks", "audit_events")),
    "faults",
}

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
]


def _database_url() -> str:
    """The URL the suite was started with: the soak makes ``<its name>_soak`` beside it."""
    url = os.environ.get("DATABASE_URL", "")
    assert url.startswith("postgres"), f"the postgres pass runs with DATABASE_URL=postgres://..., got {url!r}"
    assert settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    return url


@pytest.mark.timeout(BUDGET_S + 60)
def test_soak_five_minutes_with_faults_and_agent_kills_loses_nothing(tmp_path):
    seed = random.SystemRandom().randrange(1_000_000)
    env = {**os.environ, "DATABASE_URL": _database_url()}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the soak sets up Django itself, on its scratch database
    table = tmp_path / "soak.csv"
    argv = [sys.executable, "bench/soak.py", *ARGS, "--seed", str(seed), "--csv", str(table)]
    soak = subprocess.Popen(  # nosec B603
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = soak.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        soak.terminate()  # SIGTERM: the soak stops its roles, its broker and drops its database on the way out
        out, err = soak.communicate(timeout=60)
        pytest.fail(f"the soak (seed {seed}) ran past {BUDGET_S} s:\n{out[-6000:]}\n{err[-4000:]}")
    print(out)
    assert soak.returncode == 0, f"soak failed (seed {seed}):\n{out[-6000:]}\n{err[-8000:]}"
    assert "SOAK PASSED" in out
    assert "lost: 0, doubled: 0" in out

    with table.open(newline="") as source:
        rows = list(csv.DictReader(source))
    missing = COLUMNS - set(rows[0])
    assert not missing, f"columns missing from the CSV: {sorted(missing)}"
    assert [int(row["minute"]) for row in rows] == list(range(6)), "minute 0 (the baseline) and one row a minute"
    assert any("kill agents" in row["faults"] for row in rows), f"no simulator was killed (seed {seed})"
    assert int(rows[-1]["rows_task_events"]) > int(rows[0]["rows_task_events"])
