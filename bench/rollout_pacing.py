"""Rollout pacing from outside: how full ``max_in_flight`` stays, and how ``rate_per_minute`` spreads its tasks.

    .venv/bin/python bench/rollout_pacing.py [--agents 20] [--tasks 300] [--seed 1]
        [--max-in-flight 5] [--duration-ms 100] [--rate 60] [--rate-tasks 90] [--rate-observe-s 65]

Separate processes with the production defaults (the PostgreSQL pool on, ``DEBUG``
off, the default poll intervals): ``manage.py run_bridge``, ``manage.py
run_dispatcher`` and ``python -m aegis_agent.simulate`` (N agents, every task
"runs" ``--duration-ms``), on a scratch database ``<name>_bench_pacing`` (from
``DATABASE_URL``; created, migrated, dropped here) and a private Mosquitto on a
free port. This process only submits jobs and reads PostgreSQL.

- A, ``max_in_flight``: one ``any`` job of ``--tasks`` tasks for all the agents
  with ``max_in_flight`` 5. From the submit's commit until the job's
  ``finished_at``, every 50 ms (on a fixed schedule) it counts the job's tasks in
  ``assigned`` or ``running``: samples, samples at 0, mean and p50; the wall
  time (commit → the job's ``finished_at``) against the ideal, tasks x duration
  / max_in_flight, which assumes no round trip and an instant refill; one
  slot's time per task (wall x max_in_flight / tasks), split by the sampled mean
  into the time a task held it (assigned → succeeded, as PostgreSQL shows it)
  and the time it stood empty (succeeded → the next task assigned); and how
  many distinct agents ran tasks. Only committed states are read: the tasks'
  ``assigned_at``/``finished_at`` are the roles' clocks inside their
  transactions, and a claim for a group of agents commits after all of them.
- B, ``rate_per_minute``: with the agents idle, one ``any`` job of
  ``--rate-tasks`` tasks with ``rate_per_minute`` ``--rate``, watched for
  ``--rate-observe-s`` seconds and then canceled. From the tasks' ``assigned_at``:
  the most assigned within any 1 s window (half-open), within the first 5 s and
  the first 60 s after the commit, and the gaps between assignments. A budget
  released per minute shows as the whole minute's tasks at once; a token bucket
  as one or two a second.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    drop_database,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)

SAMPLE_S = 0.05
IN_FLIGHT_SQL = """
    SELECT (SELECT count(*) FROM tasks WHERE job_id = %s AND state IN ('assigned', 'running')), finished_at
    FROM jobs WHERE id = %s
"""


def _submit(spec: Any) -> tuple[int, float]:
    """Submit a job; returns its id and the wall-clock instant its transaction committed."""
    from django.db import transaction

    from aegis_site.core.audit import Actor
    from tasks import actions

    committed: list[float] = []
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.time()))
        job, _ = actions.submit_job(spec, Actor.system("bench"))
    return job.pk, committed[0]


def _task_times(job_id: int) -> list[tuple[str | None, datetime | None, datetime | None]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT agent_id, assigned_at, finished_at FROM tasks WHERE job_id = %s", [job_id])
        return list(cursor.fetchall())


def scenario_in_flight(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    from django.db import connection

    from tasks.engine.submit import JobSpec

    spec = JobSpec(
        kind="noop",
        mode="any",
        task_count=args.tasks,
        target_labels={"simulated": "true"},
        max_in_flight=args.max_in_flight,
    )
    job_id, committed = _submit(spec)
    samples: list[int] = []
    deadline = time.monotonic() + max(120.0, 10 * args.tasks * args.duration_ms / 1000 / args.max_in_flight)
    next_at = time.monotonic()
    with connection.cursor() as cursor:
        while True:
            cursor.execute(IN_FLIGHT_SQL, [job_id, job_id])
            in_flight, finished_at = cursor.fetchone()
            if finished_at is not None:
                break
            samples.append(int(in_flight))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within the deadline")
            if len(samples) % 40 == 0:
                procs.check_alive()
            next_at = max(next_at + SAMPLE_S, time.monotonic())  # a slow read skips samples, no catch-up burst
            time.sleep(max(0.0, next_at - time.monotonic()))
    rows = _task_times(job_id)
    wall = finished_at.timestamp() - committed
    mean = sum(samples) / len(samples) if samples else float("nan")
    cycle = wall * args.max_in_flight / args.tasks  # how long one slot took per task, from outside
    return {
        "samples": len(samples),
        "zero": sum(1 for s in samples if s == 0),
        "mean": mean,
        "p50": percentile(samples, 50),
        "max": max(samples, default=0),
        "cycle_s": cycle,
        "held_s": cycle * mean / args.max_in_flight,
        "empty_s": cycle * (1 - mean / args.max_in_flight),
        "agents": len({agent for agent, _, _ in rows if agent is not None}),
        "wall_s": wall,
        "ideal_s": args.tasks * args.duration_ms / 1000 / args.max_in_flight,
    }


def scenario_rate(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    from aegis_site.core.audit import Actor
    from aegis_site.core.errors import InvalidTransition
    from tasks import actions
    from tasks.engine.submit import JobSpec

    spec = JobSpec(
        kind="noop",
        mode="any",
        task_count=args.rate_tasks,
        target_labels={"simulated": "true"},
        rate_per_minute=args.rate,
    )
    job_id, committed = _submit(spec)
    end = time.monotonic() + args.rate_observe_s
    while time.monotonic() < end:
        procs.check_alive()
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    with contextlib.suppress(InvalidTransition):  # it may have finished (a burst would have it done already)
        actions.cancel_job(job_id, Actor.system("bench"))
    times = sorted(a.timestamp() - committed for _, a, _ in _task_times(job_id) if a is not None)
    window = max((sum(1 for u in times[i:] if u - t < 1.0) for i, t in enumerate(times)), default=0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "assigned": len(times),
        "max_1s": window,
        "first_5s": sum(1 for t in times if t < 5.0),
        "first_60s": sum(1 for t in times if t < 60.0),
        "first_at_s": times[0] if times else float("nan"),
        "gap_p50_s": percentile(gaps, 50),
        "gap_max_s": max(gaps, default=float("nan")),
        "observed_s": args.rate_observe_s,
    }


def _online(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    procs = Processes()
    database_url = scratch_database_url("bench_pacing")
    failed = True
    try:
        setup_django(database_url)
        port = procs.mosquitto()
        tag = f"pacing-{os.getpid()}"
        env = role_env(
            database_url,
            port,
            tag,
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",  # the production default; the bridge says it connected
            TRANSITION_LOG_LEVEL="WARNING",
        )
        procs.django_command("bridge", ["run_bridge"], env)
        procs.django_command("dispatcher", ["run_dispatcher"], env)
        procs.wait_log("bridge", "bridge connected")
        time.sleep(0.5)  # the SUBACK follows the log line; agents that connect before it are never learned
        prefix = f"pace{os.getpid()}-"
        procs.start(
            "simulator",
            [
                PYTHON,
                "-m",
                "aegis_agent.simulate",
                "--count",
                str(args.agents),
                "--port",
                str(port),
                "--prefix",
                prefix,
                "--duration-ms",
                str(args.duration_ms),
                "--seed",
                str(args.seed),
                "--stats-every-s",
                "0",
                "--log-level",
                "WARNING",
            ],
        )

        def all_online() -> bool:
            procs.check_alive()
            return _online(prefix) == args.agents

        wait_until(all_online, 30 + args.agents / 20, f"{args.agents} simulated agents online in the database")
        print(
            f"{args.agents} agents, A: {args.tasks} tasks of {args.duration_ms:g} ms, max_in_flight "
            f"{args.max_in_flight}; B: {args.rate_tasks} tasks, rate_per_minute {args.rate}, "
            f"watched {args.rate_observe_s:g} s; seed {args.seed}",
            flush=True,
        )
        in_flight = scenario_in_flight(args, procs)
        rate = scenario_rate(args, procs)
        procs.check_alive()
        failed = False
        return in_flight, rate
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


def _row(label: str, value: float, ideal: float | None, fmt: str) -> str:
    ideal_text = format(ideal, fmt) if ideal is not None else "-"
    ratio = f"{value / ideal:.2f}" if ideal else "-"
    return f"{label:<52}{format(value, fmt):>10}{ideal_text:>10}{ratio:>10}"


def report(args: argparse.Namespace, a: dict[str, Any], b: dict[str, Any]) -> None:
    limit = args.max_in_flight
    per_s = args.rate / 60
    print()
    print(f"{'A: max_in_flight ' + str(limit):<52}{'measured':>10}{'ideal':>10}{'ratio':>10}")
    print(_row("samples (every 50 ms, commit → finished)", a["samples"], None, ".0f"))
    print(_row("samples with in-flight 0", a["zero"], None, ".0f") + f"   ({a['zero'] / a['samples']:.1%})")
    print(_row("in-flight mean (samples)", a["mean"], limit, ".2f"))
    print(_row("in-flight p50 (samples)", a["p50"], limit, ".0f"))
    print(_row("in-flight max (samples)", a["max"], limit, ".0f"))
    duration = args.duration_ms / 1000
    print(_row("one slot's time per task, s (wall x limit / tasks)", a["cycle_s"], duration, ".3f"))
    print(_row("  of which the task was held (x mean / limit), s", a["held_s"], duration, ".3f"))
    print(_row("  of which the slot was empty, s", a["empty_s"], 0.0, ".3f"))
    print(_row("distinct agents that ran tasks", a["agents"], min(args.agents, args.tasks), ".0f"))
    print(_row("job wall time, s (commit → finished_at)", a["wall_s"], a["ideal_s"], ".2f"))
    print()
    print(f"{'B: rate_per_minute ' + str(args.rate):<52}{'measured':>10}{'ideal':>10}{'ratio':>10}")
    print(_row(f"assigned in {b['observed_s']:g} s (then canceled)", b["assigned"], None, ".0f"))
    print(_row("most assigned within any 1 s", b["max_1s"], max(1.0, per_s), ".0f"))
    print(_row("assigned in the first 5 s", b["first_5s"], 5 * per_s, ".0f"))
    if b["observed_s"] >= 60:
        print(_row("assigned in the first 60 s", b["first_60s"], float(args.rate), ".0f"))
    print(_row("first assignment, s after the commit", b["first_at_s"], None, ".2f"))
    print(_row("gap between assignments p50, s", b["gap_p50_s"], 1 / per_s, ".2f"))
    print(_row("gap between assignments max, s", b["gap_max_s"], 1 / per_s, ".2f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=20, help="simulated agents (one process), all matching")
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the max_in_flight job (A)")
    parser.add_argument("--seed", type=int, default=1, help="the simulator's seed")
    parser.add_argument("--max-in-flight", type=int, default=5)
    parser.add_argument("--duration-ms", type=float, default=100.0, help="how long each simulated task runs")
    parser.add_argument("--rate", type=int, default=60, help="rate_per_minute of the paced job (B)")
    parser.add_argument("--rate-tasks", type=int, default=90, help="tasks of the paced job (B)")
    parser.add_argument("--rate-observe-s", type=float, default=65.0, help="how long B is watched")
    args = parser.parse_args()
    a, b = run(args)
    report(args, a, b)


if __name__ == "__main__":
    main()
