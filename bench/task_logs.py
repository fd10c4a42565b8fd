"""Task output (issue 17) through Mosquitto and the real bridge into PostgreSQL, and read back through the API.

    .venv/bin/python bench/task_logs.py [--agents 10] [--mb-per-task 10] [--chunk 16384] [--runs 3]
        [--tail-mbs 20] [--tail-seconds 10] [--reader auto|follow|poll] [--profile FILE] [--quick]

Separate processes with the production defaults (the PostgreSQL pool on, ``DEBUG``
off): Mosquitto started from the configuration ``manage.py setup_broker`` generates
(TLS, client certificates, the ACL and the ``aegis_auth`` plugin, persistence on),
``manage.py run_bridge``, ``manage.py run_dispatcher``, ``daphne`` (the API) and
``python -m aegis_agent.simulate`` (N agents, each with its own certificate, every
task printing ``--mb-per-task`` of log-like text in ``--chunk``-byte ``task.log``
chunks, 20 % of them on stderr), on a scratch database ``<name>_bench_logs`` (from
``DATABASE_URL``; created, migrated, dropped here).

1. Baseline, no bridge: the same simulator output read straight from Mosquitto by
   the bridge's own MQTT client class (``broker.client.BatchingClient``, TLS, QoS 1,
   the bridge's certificate) that only counts the messages: the transport's
   ceiling on this machine. The ratio ingestion / baseline is the share of that
   ceiling the bridge keeps while it decodes, validates and stores every chunk.
2. Ingestion: one ``each`` job of one ``noop`` task per agent, output unpaced (each
   task keeps 32 chunks awaiting their PUBACK); MB/s and chunks/s from the job's
   commit to the moment ``task_log_attempts`` holds every byte. Database bytes per
   MB of output: ``pg_total_relation_size`` of ``task_log_chunks`` and
   ``task_log_attempts`` (table, TOAST, indexes) after the run minus before.
3. Tail: the same with each task paced at ``--tail-mbs`` / N MB/s for
   ``--tail-seconds``, three ways: one task followed by a reader (an operator
   watching a task: the target's figure); every task followed, one reader each
   (each its own operator, as the API throttles per operator), so the API serves
   as many bytes as the bridge ingests, on the same cores; and every task followed
   at half the ingestion rate measured in 2, where the bridge keeps up. A reader
   follows through the API
   (``GET /api/v1/tasks/{id}/logs/?after_seq=&follow=`` when the server has
   ``follow``, else polling every 50 ms: ``--reader``). The lag of a chunk is the
   instant its reader has it minus the publish time the simulator wrote in its
   first line; p50/p99 over every chunk of the run.

``--profile FILE``: a ``py-spy record`` (raw collapsed stacks, idle threads too) of
the bridge over the ingest runs (``pip install py-spy``).

MB is 2^20 bytes. Figures are medians over ``--runs``; percentiles nearest-rank per run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    Profile,
    drop_database,
    free_port,
    median,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_port,
    wait_until,
)
from bench._output_broker import GeneratedBroker, RawReader
from bench._output_readers import POLL_S, Reader, has_follow, operator_tokens

MB = 1024 * 1024
DAPHNE = str(Path(PYTHON).parent / "daphne")
STDERR_FRACTION = 0.2


# --- the control plane ------------------------------------------------------------------------------------------


def _simulator(procs: Processes, broker: GeneratedBroker, name: str, args: argparse.Namespace, rate_bps: float) -> str:
    prefix = f"{name}{os.getpid()}-"
    agent_ids = [f"{prefix}{i}" for i in range(args.agents)]
    broker.issue(agent_ids)
    procs.start(
        name,
        [
            PYTHON,
            "-m",
            "aegis_agent.simulate",
            *("--count", str(args.agents), "--port", str(broker.port), "--prefix", prefix),
            *("--tls-dir", str(broker.agents_dir), "--stats-every-s", "0", "--log-level", "WARNING"),
            *("--output-bytes", str(int(args.mb_per_task * MB)), "--output-rate", str(rate_bps)),
            *("--output-chunk", str(args.chunk), "--output-stderr", str(STDERR_FRACTION)),
            *("--max-concurrency", "4", "--seed", "17"),
        ],
    )
    return prefix


def _online(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


def _wait_online(procs: Processes, prefix: str, count: int) -> None:
    def all_online() -> bool:
        procs.check_alive()
        return _online(prefix) == count

    wait_until(all_online, 60, f"{count} simulated agents online in the database", 0.2)


def _submit(agent_ids: list[str]) -> tuple[list[int], float]:
    """One noop task per agent; returns the task ids and the commit instant (perf_counter)."""
    from django.db import transaction

    from aegis_site.core.audit import Actor
    from tasks import actions
    from tasks.engine.submit import JobSpec
    from tasks.models import Task

    committed: list[float] = []
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.perf_counter()))
        spec = JobSpec(kind="noop", mode="each", target_agent_ids=agent_ids, execution_timeout_s=3600)
        job, _ = actions.submit_job(spec, Actor.system("bench"))
    task_ids = list(Task.objects.filter(job=job).order_by("pk").values_list("pk", flat=True))
    return task_ids, committed[0]


def _stored(task_ids: list[int]) -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(bytes), 0), coalesce(sum(chunks), 0) FROM task_log_attempts WHERE task_id = ANY(%s)",
            [task_ids],
        )
        stored_bytes, chunks = cursor.fetchone()
    return int(stored_bytes), int(chunks)


def _table_bytes() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('task_log_chunks') + pg_total_relation_size('task_log_attempts')")
        return int(cursor.fetchone()[0])


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _backends() -> list[int]:
    """The PostgreSQL backends of the scratch database (the roles' pooled connections, this process's)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [int(row[0]) for row in cursor.fetchall()]


def _backends_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            total += _cpu(pid)
        except psutil.Error:  # a backend that ended (the pool closed it): its time is lost
            continue
    return total


def _ingest(
    procs: Processes, agent_ids: list[str], total: int, timeout_s: float, during: Callable[[list[int]], None] | None
) -> dict[str, float]:
    """Submit one task per agent, wait until every byte is stored; ``during`` starts readers on the task ids."""
    before = _table_bytes()
    task_ids, committed = _submit(agent_ids)
    if during is not None:
        during(task_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        stored, chunks = _stored(task_ids)
        if stored >= total:
            elapsed = time.perf_counter() - committed
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored} of {total} bytes stored after {timeout_s}s")
        procs.check_alive()
        time.sleep(0.02)
    return {
        "mbs": total / MB / elapsed,
        "chunks_per_s": chunks / elapsed,
        "db_bytes_per_mb": (_table_bytes() - before) / (total / MB),
        "seconds": elapsed,
    }


# --- the readers --------------------------------------------------------------------------------------------------


class Readers:
    """Tail runs: paced output from a fresh simulator, one reader per task (each with its own operator)."""

    def __init__(self, base_url: str, tokens: list[str], follow: bool, pids: dict[str, int]) -> None:
        self.base_url, self.tokens, self.follow = base_url, tokens, follow
        self.pids = pids  # the roles whose CPU each run reports (with the simulator and this process)

    def tail(
        self,
        procs: Processes,
        broker: GeneratedBroker,
        args: argparse.Namespace,
        name: str,
        mbs: float,
        timeout_s: float,
        followed: int,
    ) -> dict[str, float]:
        """``args.runs`` runs with every task printing at ``mbs`` / N MB/s for ``args.tail_seconds`` and the first
        ``followed`` tasks each followed by a reader; medians."""
        rate_bps = mbs * MB / args.agents
        per_task = int(rate_bps * args.tail_seconds)
        paced = argparse.Namespace(**{**vars(args), "mb_per_task": per_task / MB})
        prefix = _simulator(procs, broker, name, paced, rate_bps)
        _wait_online(procs, prefix, args.agents)
        agent_ids = [f"{prefix}{i}" for i in range(args.agents)]
        runs = []
        for _ in range(args.runs):
            readers: list[Reader] = []

            def start(task_ids: list[int], readers: list[Reader] = readers) -> None:
                pairs = zip(task_ids[:followed], self.tokens[:followed], strict=True)
                readers.extend(Reader(self.base_url, token, task, per_task, self.follow) for task, token in pairs)
                for thread in readers:
                    thread.start()

            pids = self.pids | {
                "simulator": next(p.pid for n, p in procs.children if n == name),
                "bench readers": os.getpid(),
            }
            backends = _backends()
            before = {n: _cpu(pid) for n, pid in pids.items()} | {"postgres backends": _backends_cpu(backends)}
            started = time.perf_counter()
            run = _ingest(procs, agent_ids, per_task * args.agents, timeout_s, start)
            wall = time.perf_counter() - started
            after = {n: _cpu(pid) for n, pid in pids.items()} | {"postgres backends": _backends_cpu(backends)}
            cpu = {n: (after[n] - before[n]) / wall * 100 for n in after}
            for thread in readers:
                thread.join(60)
                if thread.error is not None or thread.is_alive():
                    raise RuntimeError(f"a reader failed: {thread.error!r} (read {thread.read} bytes)")
            lags = [lag for thread in readers for lag in thread.lags]
            throttled = sum(thread.throttled for thread in readers)
            run |= {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": max(lags), "throttled": throttled}
            runs.append(run)
            print(
                f"  tail run at {mbs:.1f} MB/s offered, {followed} followed: {run['mbs']:.1f} MB/s ingested, "
                f"lag p50 {run['p50'] * 1000:.0f} ms, p99 {run['p99'] * 1000:.0f} ms, max {run['max'] * 1000:.0f} ms "
                f"({len(lags)} chunks read, "
                f"{throttled} answers 429); CPU % of a core: " + ", ".join(f"{n} {v:.0f}" for n, v in cpu.items()),
                flush=True,
            )
        procs.stop(next(process for n, process in procs.children if n == name))
        return {"offered": mbs, "followed": followed} | {
            key: median([run[key] for run in runs]) for key in ("mbs", "p50", "p99", "max")
        }


# --- the run ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    database_url = scratch_database_url("bench_logs")
    failed = True
    per_task = int(args.mb_per_task * MB)
    total = per_task * args.agents
    chunks_per_round = args.agents * -(-per_task // args.chunk)
    timeout_s = 120 + total / MB  # at 1 MB/s it would still finish
    results: dict[str, Any] = {}
    try:
        setup_django(database_url)
        broker = GeneratedBroker(procs)

        # 1. the baseline: Mosquitto alone
        prefix = _simulator(procs, broker, "raw", args, 0.0)
        raw_ids = [f"{prefix}{i}" for i in range(args.agents)]
        reader = RawReader(broker)
        try:
            reader.wait_hellos(raw_ids)
            reader.measure(raw_ids, 1_000_000, chunks_per_round, timeout_s)  # warm-up
            seconds = [
                reader.measure(raw_ids, 1_000_000 * (run + 2), chunks_per_round, timeout_s) for run in range(args.runs)
            ]
        finally:
            reader.close()
        procs.stop(next(p for n, p in procs.children if n == "raw"))
        results["raw_mbs"] = median([total / MB / s for s in seconds])
        results["raw_chunks_per_s"] = median([chunks_per_round / s for s in seconds])

        # 2. ingestion through the bridge
        tag = f"bench-logs-{os.getpid()}"
        data_dir = procs.tmp / "data"
        (data_dir / "static").mkdir(parents=True)  # whitenoise's STATIC_ROOT (the API needs no static files)
        env = role_env(
            database_url,
            broker.port,
            tag,
            **broker.bridge_env(),
            LOG_LEVEL="WARNING",
            TRANSITION_LOG_LEVEL="WARNING",
            BRIDGE_OUTBOX_POLL_INTERVAL="0.05",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            HTTPS_ONLY="0",  # plain HTTP on the loopback, as in bench/soak.py
            DATA_DIR=str(data_dir),
            MQTT_CLIENT_ID=f"aegis-bridge-{tag}",  # aegis_auth admits the bridge's certificate as aegis-bridge-*
        )
        # Replicas share the subscriptions (MQTT_SHARE_GROUP), each with its own client id, as in production.
        bridges = [
            procs.django_command(
                f"bridge{n}" if n else "bridge",
                ["run_bridge"],
                {**env, "LOG_LEVEL": "INFO", "MQTT_CLIENT_ID": f"aegis-bridge-{tag}-{n}"},
            )
            for n in range(args.bridges)
        ]
        bridge = bridges[0]
        procs.django_command("dispatcher", ["run_dispatcher"], env)
        for n in range(args.bridges):
            procs.wait_log(f"bridge{n}" if n else "bridge", "bridge connected")
        time.sleep(0.5)  # the SUBACK follows the log line
        prefix = _simulator(procs, broker, "ingest", args, 0.0)
        _wait_online(procs, prefix, args.agents)
        simulator = next(p for n, p in procs.children if n == "ingest")
        agent_ids = [f"{prefix}{i}" for i in range(args.agents)]
        print(
            f"agents={args.agents}, bridges={args.bridges}, "
            f"output per task={args.mb_per_task:g} MB in {args.chunk}-byte chunks "
            f"({STDERR_FRACTION:.0%} stderr), runs={args.runs}, broker=generated configuration (TLS) on :{broker.port}",
            flush=True,
        )
        _ingest(procs, agent_ids, total, timeout_s, None)  # warm-up
        ingests: list[dict[str, float]] = []
        cpu: dict[str, list[float]] = {"bridge": [], "simulator": [], "mosquitto": [], "postgres backends": []}
        pids = {"simulator": simulator.pid, "mosquitto": broker.process.pid}
        pids |= {f"bridge{n}" if n else "bridge": process.pid for n, process in enumerate(bridges)}
        cpu |= {f"bridge{n}": [] for n in range(1, args.bridges)}
        profile = Profile(procs, bridge.pid, args.profile) if args.profile else None
        for _ in range(args.runs):
            backends = _backends()
            before = {name: _cpu(pid) for name, pid in pids.items()} | {"postgres backends": _backends_cpu(backends)}
            started = time.perf_counter()
            ingests.append(_ingest(procs, agent_ids, total, timeout_s, None))
            wall = time.perf_counter() - started
            after = {name: _cpu(pid) for name, pid in pids.items()} | {"postgres backends": _backends_cpu(backends)}
            for name, used in after.items():
                cpu[name].append((used - before[name]) / wall * 100)
            print(
                f"  ingest run: {ingests[-1]['mbs']:.1f} MB/s, {ingests[-1]['chunks_per_s']:,.0f} chunks/s", flush=True
            )
        if profile is not None:
            profile.stop()
        procs.stop(simulator)
        for key in ("mbs", "chunks_per_s", "db_bytes_per_mb"):
            results[f"ingest_{key}"] = median([run[key] for run in ingests])
        results["cpu"] = {name: median(values) for name, values in cpu.items()}

        # 3. the tail: paced output, one API reader per task
        web_port = free_port()
        web = procs.start("web", [DAPHNE, "-b", "127.0.0.1", "-p", str(web_port), "aegis_site.asgi:application"], env)
        wait_port(web_port, 30)
        base_url, tokens = f"http://127.0.0.1:{web_port}", operator_tokens(args.agents)
        follow = args.reader == "follow" or (args.reader == "auto" and has_follow(base_url, tokens[0], 1))
        results["reader"] = "follow" if follow else f"poll every {POLL_S * 1000:.0f} ms"
        roles = {"web": web.pid, "mosquitto": broker.process.pid} | {
            f"bridge{n}" if n else "bridge": process.pid for n, process in enumerate(bridges)
        }
        readers = Readers(base_url, tokens, follow, roles)
        # The operator's view: one task followed while every agent prints (the target's figure).
        results["tail"] = readers.tail(procs, broker, args, "tail", args.tail_mbs, timeout_s, 1)
        # Every task followed: the readers' API traffic equals the ingested output, on the same two cores.
        results["tail_all"] = readers.tail(procs, broker, args, "tailall", args.tail_mbs, timeout_s, args.agents)
        # At half the measured ingestion rate the bridge keeps up: the lag is the follow path's, not a backlog's.
        half = results["ingest_mbs"] / 2
        results["tail_kept_up"] = readers.tail(procs, broker, args, "tailhalf", half, timeout_s, args.agents)
        procs.check_alive()
        failed = False
        return results
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10, help="simulated agents, one task each per run")
    parser.add_argument("--mb-per-task", type=float, default=10.0, help="output of each task in the ingest runs")
    parser.add_argument("--chunk", type=int, default=16384, help="bytes per task.log chunk (128..16384)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tail-mbs", type=float, default=20.0, help="output of all agents together in the tail runs")
    parser.add_argument("--tail-seconds", type=float, default=10.0, help="how long each tail run's tasks print")
    parser.add_argument("--reader", choices=("auto", "follow", "poll"), default="auto")
    parser.add_argument("--bridges", type=int, default=1, help="bridge replicas sharing the subscriptions")
    parser.add_argument("--profile", help="write a py-spy profile of the bridge over the ingest runs to this file")
    parser.add_argument("--quick", action="store_true", help="2 MB per task, 3 s tail runs, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.mb_per_task, args.tail_seconds, args.runs = 2.0, 3.0, 2

    r = run(args)
    print()
    print(f"{'metric':<52}{'value':>12}{'target':>10}")
    rows = [
        ("baseline: Mosquitto alone, MB/s", f"{r['raw_mbs']:.1f}", ""),
        ("baseline: chunks/s", f"{r['raw_chunks_per_s']:,.0f}", ""),
        ("ingested through the bridge, MB/s", f"{r['ingest_mbs']:.1f}", ">= 20"),
        ("ingested, chunks/s", f"{r['ingest_chunks_per_s']:,.0f}", ""),
        ("ingested / baseline", f"{r['ingest_mbs'] / r['raw_mbs']:.2f}", ""),
        ("database bytes per MB of output", f"{r['ingest_db_bytes_per_mb'] / MB:.2f} MB", ""),
    ]
    for key, target in (("tail", "< 1000"), ("tail_all", ""), ("tail_kept_up", "")):
        tail = r[key]
        rows += [
            (
                f"tail at {tail['offered']:.1f} MB/s offered, {tail['followed']} followed: ingested, MB/s",
                f"{tail['mbs']:.1f}",
                "",
            ),
            ("  lag p50, ms (publish -> API reader has it)", f"{tail['p50'] * 1000:.0f}", ""),
            ("  lag p99, ms", f"{tail['p99'] * 1000:.0f}", target),
            ("  lag max, ms", f"{tail['max'] * 1000:.0f}", ""),
        ]
    for label, value, target in rows:
        print(f"{label:<52}{value:>12}{target:>10}")
    cpu = ", ".join(f"{name} {percent:.0f}" for name, percent in r["cpu"].items())
    print(f"CPU during the ingest runs (% of one core, median): {cpu}")
    print(f"tail readers: {r['reader']}")


if __name__ == "__main__":
    main()
