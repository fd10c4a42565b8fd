"""The CI-sized soak: ``bench/soak.py --minutes 5`` (web, bridge, dispatcher, 200 agents, a fault every 30-60 s).

The soak is its own program (its own scratch database ``<name>_soak``, its own
Mosquitto, every role a process with the production defaults); this test runs it
as a subprocess and passes when it exits 0: no task lost, none succeeded twice,
every job finished, each role's RSS within 20 % of its value after warm-up. The
seed is random and printed; ``bench/soak.py --seed N`` repeats a failed run.
"""

from __future__ import annotations

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
BUDGET_S = 540  # 5 minutes of load, start-up, the drain and the RSS settle; about 7 minutes on the 2-core VM

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
def test_soak_five_minutes_with_faults_loses_nothing():
    seed = random.SystemRandom().randrange(1_000_000)
    env = {**os.environ, "DATABASE_URL": _database_url()}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the soak sets up Django itself, on its scratch database
    argv = [sys.executable, "bench/soak.py", "--minutes", "5", "--seed", str(seed)]
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
