"""The peer: the same no-op round trip through Celery + Redis, on the same machine.

    .venv/bin/pip install -r requirements-bench.txt        # celery[redis], benchmark extra only
    .venv/bin/python bench/peer_celery.py [--tasks 5000] [--latency 200] [--runs 3] [--quick]

A prefork worker with 2 processes (``celery -A bench.peer_celery worker
--concurrency 2 --pool prefork``, started and stopped here), ``acks_late=True``,
Redis broker and Redis result backend on DB ``--redis-db`` (15; only that DB is
flushed). Throughput: send K no-op tasks, wait for every result (``join_native``),
tasks/s from the first send to the last result. Latency: single tasks one at a
time, ``apply_async`` → result ready in the client. ``bench/e2e_throughput.py``
imports ``run_peer`` to print Aegis beside Celery. Figures are medians over runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import PYTHON, Processes, median, percentile

REDIS_DB = int(os.environ.get("AEGIS_BENCH_REDIS_DB", "15"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

try:
    from celery import Celery
except ImportError:  # the benchmark extra is not installed
    Celery = None

app: Any = None
noop: Any = None
if Celery is not None:
    app = Celery("aegis_peer", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        task_acks_late=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop")
    def noop() -> None:
        return None


MISSING = (
    "Celery is not installed: it is a benchmark-only extra.\n"
    "    .venv/bin/pip install -r requirements-bench.txt\n"
    "then run this again."
)


def _flush() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def _throughput(count: int) -> float:
    from celery.result import ResultSet

    started = time.perf_counter()
    results = ResultSet([noop.apply_async() for _ in range(count)])
    results.join_native(timeout=600, propagate=True)
    return count / (time.perf_counter() - started)


def _latencies(count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        noop.apply_async().get(timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def run_peer(tasks: int, latency: int, runs: int) -> dict[str, Any]:
    """Start a worker, measure, stop it. Returns medians (tasks/s, ms) and the per-run figures."""
    if Celery is None:
        raise RuntimeError(MISSING)
    procs = Processes()
    try:
        _flush()
        worker = procs.start(
            "celery-worker",
            [
                str(Path(PYTHON).with_name("celery")),
                "-A",
                "bench.peer_celery",
                "worker",
                "--concurrency",
                "2",
                "--pool",
                "prefork",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )
        deadline = time.monotonic() + 60
        while True:  # the first task that comes back proves the worker consumes
            try:
                noop.apply_async().get(timeout=2)
                break
            except Exception as exc:
                if worker.poll() is not None or time.monotonic() > deadline:
                    log = procs.log_of("celery-worker")[-3000:]
                    raise RuntimeError(f"celery worker did not start:\n{log}") from exc
        _latencies(50)  # warm-up
        rates, p50s, p95s, p99s = [], [], [], []
        for _ in range(runs):
            rates.append(_throughput(tasks))
            samples = _latencies(latency)
            p50s.append(percentile(samples, 50))
            p95s.append(percentile(samples, 95))
            p99s.append(percentile(samples, 99))
        return {
            "tasks_per_s": median(rates),
            "rates": rates,
            "p50_ms": median(p50s),
            "p95_ms": median(p95s),
            "p99_ms": median(p99s),
            "tasks": tasks,
            "latency_samples": latency,
            "runs": runs,
        }
    finally:
        procs.stop_all()
        _flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency", type=int, default=200, help="sequential single tasks per latency run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 100 latency samples, 2 runs")
    args = parser.parse_args()
    if Celery is None:
        sys.exit(MISSING)
    if args.quick:
        args.tasks, args.latency, args.runs = 1000, 100, 2
    import celery

    print(f"Celery {celery.__version__}, Redis broker + backend {REDIS_URL}, prefork 2, acks_late, runs={args.runs}")
    peer = run_peer(args.tasks, args.latency, args.runs)
    print(f"{'metric':<34}{'median':>12}{'runs':>34}")
    per_run = ", ".join(f"{rate:,.0f}" for rate in peer["rates"])
    print(f"{'throughput, tasks/s':<34}{peer['tasks_per_s']:>12,.0f}{per_run:>34}")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        label = f"latency {key[:3]}, ms (apply→result)"
        print(f"{label:<34}{peer[key]:>12.2f}")


if __name__ == "__main__":
    main()
