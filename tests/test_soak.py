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
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BUDGET_S = 780  # 5 minutes of load, start-up and the drain: 6.5 minutes in all at a load average of 13 on the 2-core VM
# 200 agents, not the default 1,000, and the faults twice as often as in the hour (the hour's pace would give a
# 5-minute run two or three of each): every kind of fault still happens.
ARGS = ["--minutes", "5", "--agents", "200", "--simulators", "2", "--fault-min-s", "30", "--fault-max-s", "60"]
ARGS += ["--agent-kill-min-s", "45", "--agent-kill-max-s", "90"]
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


def _database_url() -> str:
    """The URL the suite was started with: the soak makes ``<its name>_soak`` beside it."""
    url = os.environ.get("DATABASE_URL", "")
    assert url.startswith("postgres"), f"the postgres pass runs with DATABASE_URL=postgres://..., got {url!r}"
    assert settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    return url


@pytest.mark.postgres
@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")
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


def _track(rss_at: Callable[[float], float], minutes: float = 5.0) -> tuple[list[str], list[str]]:
    """One process sampled every 10 s for ``minutes``; judged past a 1-minute warm-up as the soak judges it."""
    from bench._soak_record import RssTrack

    track = RssTrack()
    for step in range(int(minutes * 6) + 1):
        track.add("bridge", 4242, step * 10.0, rss_at(step * 10.0))
    return track.check(warm_end=60.0, tolerance=0.15, ceiling=0.5)


def test_memory_criterion_fails_a_leak_and_passes_noise_and_steps():
    noise = random.Random(5)  # nosec B311
    # A leak: 8 MB a minute on 120 MB, with the sampling noise of a busy process.
    problems, report = _track(lambda t: 120 + 8 * t / 60 + noise.uniform(-3, 3))
    assert len(problems) == 1, (problems, report)
    assert "grows" in problems[0]
    # Noise: +-10 % around a flat 120 MB, and peaks (a reconnect storm) of +40 % in a few samples.
    assert _track(lambda t: 120 * (1 + noise.uniform(-0.1, 0.1)))[0] == []
    assert _track(lambda t: 168.0 if int(t) % 70 == 0 else 120.0)[0] == []
    # One step up that stays (an allocator's high-water mark after a burst): not growth.
    assert _track(lambda t: 120.0 if t < 170 else 140.0)[0] == []
    # A slow rise inside the tolerance (a cache warming): passes, and is reported.
    problems, report = _track(lambda t: 120 + t / 60)
    assert problems == []
    assert len(report) == 1
    # Far above its warm-up whatever the shape: the ceiling.
    assert "over 1.5 x" in _track(lambda t: 120.0 if t < 100 else 200.0)[0][0]
