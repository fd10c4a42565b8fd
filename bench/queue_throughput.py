"""Claim + complete throughput of the queue engine on PostgreSQL, against a naive baseline.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/aegis python bench/queue_throughput.py [--runs 5]

For each batch size (1, 10, 100) one agent claims a batch with
``tasks.actions.claim_tasks`` and completes it with one ``apply_reports`` call
(one transaction each, history rows included) until the queue is empty. The
baseline, in the same run, claims one row at a time with ``select_for_update()``
(no SKIP LOCKED) and saves each row, one transaction per task and transition.
The database is a scratch one (``<name>_bench``), created and migrated here.
Figures are medians over ``--runs`` runs; synchronous_commit stays on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aegis_site.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/aegis")
os.environ.setdefault("LOG_LEVEL", "WARNING")  # one transition line per task would drown the table
# The production default, the connection pool, is on: before forking workers the parent closes its pool
# (its sockets and threads do not survive a fork) and each worker opens its own.


def _use_scratch_database() -> None:
    """Point Django at ``<name>_bench`` (created fresh) so a real database is never touched."""
    import psycopg

    url = os.environ["DATABASE_URL"]
    base, _, name = url.rpartition("/")
    scratch = f"{name}_bench"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{scratch}"')
    os.environ["DATABASE_URL"] = f"{base}/{scratch}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per run at batch 100 (fewer at 1 and 10)")
    parser.add_argument("--baseline-tasks", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="claiming processes (each its own agent) per engine run"
    )
    args = parser.parse_args()

    _use_scratch_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        sync = cursor.fetchone()[0]
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print(f"PostgreSQL {version}, synchronous_commit={sync}, runs={args.runs}")

    sizes = {1: max(args.tasks // 10, 200), 10: max(args.tasks // 2, 500), 100: args.tasks}
    baseline = [_run_baseline(args.baseline_tasks) for _ in range(args.runs)]
    base_median = statistics.median(baseline)
    print(f"{'variant':<28}{'tasks/run':>10}{'median tasks/s':>16}{'min':>10}{'max':>10}{'vs naive':>10}")
    print(
        f"{'naive (FOR UPDATE, 1/tx)':<28}{args.baseline_tasks:>10}{base_median:>16,.0f}"
        f"{min(baseline):>10,.0f}{max(baseline):>10,.0f}{1.0:>10.2f}"
    )
    for workers in args.workers:
        for batch, count in sizes.items():
            rates = [_run_engine(count, batch, workers) for _ in range(args.runs)]
            median = statistics.median(rates)
            label = f"engine batch {batch}, {workers} proc"
            print(
                f"{label:<28}{count:>10}{median:>16,.0f}"
                f"{min(rates):>10,.0f}{max(rates):>10,.0f}{median / base_median:>10.2f}",
                flush=True,
            )


def _seed(count: int, agents: int = 1) -> list[str]:
    from django.db import connection

    from aegis_site.core.audit import Actor
    from registry.models import Agent, Connectivity
    from tasks import actions
    from tasks.engine.submit import JobSpec
    from tasks.models import Job, Task, TaskEvent

    TaskEvent.objects.all().delete()
    Task.objects.all().delete()
    Job.objects.all().delete()
    names = [f"bench-agent-{i}" for i in range(agents)]
    for name in names:
        Agent.objects.update_or_create(
            pk=name, defaults={"max_concurrency": 1_000_000, "connectivity": Connectivity.ONLINE}
        )
    spec = JobSpec(kind="bench", mode="any", task_count=count, target_all=True, allow_no_agents=True)
    actions.submit_job(spec, Actor.system("bench"))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE tasks")
        cursor.execute("VACUUM ANALYZE task_events")
    return names


def _drain(agent: str, batch: int) -> int:
    """Claim and complete until the queue is empty; returns how many tasks this agent did."""
    from tasks import actions
    from tasks.engine.reports import Report

    done = 0
    while True:
        claimed = actions.claim_tasks(agent, batch)
        if not claimed:
            return done
        reports = [
            Report("succeeded", a.task_id, a.attempt, message_id=f"{a.task_id}-{a.attempt}", result={"ok": True})
            for a in claimed
        ]
        actions.apply_reports(agent, reports)
        done += len(claimed)


def _worker(agent: str, batch: int, start: Any, results: Any) -> None:
    from django.db import connections

    start.wait()
    results.put(_drain(agent, batch))
    connections.close_all()


def _run_engine(count: int, batch: int, workers: int = 1) -> float:
    from django.db import connections

    agents = _seed(count, workers)
    if workers == 1:
        started = time.perf_counter()
        done = _drain(agents[0], batch)
    else:
        connections.close_all()  # children must not share the parent's socket
        if connections["default"].pool is not None:
            connections["default"].close_pool()  # nor its pool's: each child opens its own
        context = multiprocessing.get_context("fork")
        start, results = context.Event(), context.Queue()
        procs = [context.Process(target=_worker, args=(a, batch, start, results)) for a in agents]
        for proc in procs:
            proc.start()
        time.sleep(0.5)  # let every worker connect and wait at the start line
        started = time.perf_counter()
        start.set()
        done = sum(results.get() for _ in procs)
        for proc in procs:
            proc.join()
    elapsed = time.perf_counter() - started
    assert done == count, (done, count)
    return done / elapsed


def _run_baseline(count: int) -> float:
    """One task per transaction: lock the first queued row (waiting on locks), save it, then save its result."""
    from django.db import transaction

    from aegis_site.core import clock
    from tasks.models import Task, TaskEvent, TaskState

    agent = _seed(count)[0]
    done = 0
    started = time.perf_counter()
    while True:
        with transaction.atomic():
            task = Task.objects.select_for_update().filter(state=TaskState.QUEUED).order_by("-priority", "pk").first()
            if task is None:
                break
            task.state, task.agent_id, task.attempt = TaskState.ASSIGNED, agent, task.attempt + 1
            task.save()
            TaskEvent.objects.create(task=task, kind="assigned", attempt=task.attempt, created_at=clock.now())
        with transaction.atomic():
            task = Task.objects.select_for_update().get(pk=task.pk)
            task.state, task.result = TaskState.SUCCEEDED, {"ok": True}
            task.save()
            TaskEvent.objects.create(
                task=task, kind="succeeded", attempt=task.attempt, message_id=f"b-{task.pk}", created_at=clock.now()
            )
        done += 1
    elapsed = time.perf_counter() - started
    return done / elapsed


if __name__ == "__main__":
    main()
