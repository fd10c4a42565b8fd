"""Horizontal scale-out: 1, 2 and 3 replicas each of the bridge and the dispatcher on one PostgreSQL and one Mosquitto.

    .venv/bin/python bench/scale_out.py [--replicas 1,2,3] [--agents 60] [--simulators 2] [--tasks 3000]
        [--runs 3] [--hb-agents 5000] [--hb-rounds 10] [--quick] [--profile DIR]

Scratch database ``<name>_scale`` (from ``DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/aegis``; created, migrated, dropped here) and a
private Mosquitto on a free port (MQTT 5). For each replica count N, N ``manage.py
run_bridge`` processes (``MQTT_CLIENT_ID`` ``<tag>-bridge-<i>``, one ``MQTT_SHARE_GROUP``:
the broker hands each message of ``$share/<group>/aegis/agents/+/...`` to one of them)
and N ``manage.py run_dispatcher`` processes, production settings (pool on, DEBUG off).
The simulated fleet (``--simulators`` processes of ``python -m aegis_agent.simulate``,
``--agents`` in all, no-op tasks of 0 ms) stays connected across the replica counts.

- Tasks/s: one ``any`` job of ``--tasks`` ``noop`` tasks, from the submit's commit to
  the job's ``finished_at`` (as ``bench/e2e_throughput.py``); median of ``--runs``.
  CPU per process (psutil, % of one core over the run), of the PostgreSQL backends
  serving the scratch database and of the broker. Every task must have exactly one
  ``succeeded`` event and the job's counter must say so: "lost" and "doubled".
- Heartbeats/s: the drain of ``bench/heartbeats.py``, with N bridges. The dispatchers
  stop, the bridges are killed (their persistent sessions stay members of the share
  group, and the broker queues each its turn), ``--hb-agents`` x ``--hb-rounds`` QoS 1
  heartbeats are published between N start markers and N end markers, and the bridges
  start again. Heartbeats/s = heartbeats / (latest end marker's ``last_seen_at`` -
  earliest start marker's): both are the bridges' clocks at ingestion.

Ratios are to the first replica count of the same invocation. ``--profile DIR``
records py-spy (raw collapsed stacks) of every role process during the first
throughput run and samples ``pg_stat_activity.wait_event`` every 10 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    Profile,
    drop_database,
    median,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)
from bench.heartbeats import DbStats, Publisher, _create_agents, _heartbeat


class Cpu:
    """CPU seconds of named processes and of the PostgreSQL backends of one database, between two snapshots."""

    def __init__(self, database: str, named: dict[str, int]) -> None:
        self.database = database
        self.named = named

    def _backends(self) -> dict[int, float]:
        import psutil

        found = {}
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["name"] == "postgres" and f" {self.database} " in cmdline:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    found[process.pid] = times.user + times.system
        return found

    def snapshot(self) -> tuple[float, dict[str, float], dict[int, float]]:
        import psutil

        named = {}
        for name, pid in self.named.items():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                named[name] = times.user + times.system
        return time.perf_counter(), named, self._backends()

    @staticmethod
    def percent(before: tuple[float, dict[str, float], dict[int, float]], after: Any) -> dict[str, float]:
        """% of one core per named process, and ``postgres`` for the backends (new ones count from zero)."""
        wall = after[0] - before[0]
        shares = {name: (after[1][name] - before[1].get(name, 0.0)) / wall * 100 for name in after[1]}
        backends = sum(cpu - before[2].get(pid, 0.0) for pid, cpu in after[2].items())
        shares["postgres"] = backends / wall * 100
        return shares


class WaitSampler:
    """``pg_stat_activity`` of the scratch database every 10 ms: which wait events its backends are in."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        name = self.url.rpartition("/")[2]
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), left(query, 60) "
                    "FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()",
                    [name],
                ).fetchall()
                self.samples += 1
                for event, query in rows:
                    self.counts[f"{event} | {' '.join(query.split())}"] += 1

    def close(self) -> list[tuple[str, int]]:
        self.stop.set()
        self.thread.join(5)
        return self.counts.most_common(12)


def _submit(count: int) -> tuple[int, float]:
    from django.db import transaction

    from aegis_site.core.audit import Actor
    from tasks import actions
    from tasks.engine.submit import JobSpec

    spec = JobSpec(kind="noop", mode="any", task_count=count, target_labels={"simulated": "true"})
    committed: list[float] = []
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.time()))
        job, _ = actions.submit_job(spec, Actor.system("bench"))
    return job.pk, committed[0]


def _throughput_run(count: int) -> tuple[float, int, int]:
    """Tasks/s of one job of ``count`` no-op tasks; then how many were lost and how many completed twice."""
    from django.db import connection

    from tasks.models import Job

    job_id, committed = _submit(count)
    deadline = time.monotonic() + max(120.0, count / 50)
    while True:
        job = Job.objects.only("tasks_succeeded", "tasks_failed", "tasks_canceled", "finished_at").get(pk=job_id)
        if job.tasks_finished >= count and job.finished_at is not None:
            break
        if time.monotonic() > deadline:
            print(f"job {job_id}: {job.tasks_finished} of {count} finished before the deadline", flush=True)
            break
        time.sleep(0.01)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE n = 0 OR t.state <> 'succeeded'), count(*) FILTER (WHERE n > 1) FROM ("
            " SELECT t.id, t.state, (SELECT count(*) FROM task_events e"
            " WHERE e.task_id = t.id AND e.kind = 'succeeded') AS n FROM tasks t WHERE t.job_id = %s) t",
            [job_id],
        )
        lost, doubled = cursor.fetchone()
        cursor.execute(
            "SELECT kind, extract(epoch FROM min(created_at))::float8,"
            " extract(epoch FROM percentile_disc(0.5) WITHIN GROUP (ORDER BY created_at))::float8,"
            " extract(epoch FROM max(created_at))::float8 FROM task_events"
            " WHERE task_id IN (SELECT id FROM tasks WHERE job_id = %s) GROUP BY kind ORDER BY 2",
            [job_id],
        )
        phases = [
            f"{kind} {lo - committed:+.2f}/{mid - committed:.2f}/{hi - committed:.2f}" for kind, lo, mid, hi in cursor
        ]
        print(f"  job {job_id}: events after the commit, first/median/last s: {', '.join(phases)}", flush=True)
    if job.tasks_succeeded != count - lost:
        print(f"job {job_id}: counter says {job.tasks_succeeded} succeeded, events say {count - lost}", flush=True)
        lost = max(lost, abs(count - job.tasks_succeeded))
    elapsed = (job.finished_at.timestamp() if job.finished_at else time.time()) - committed
    return count / elapsed, int(lost), int(doubled)


def _online(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


class Stack:
    """The role processes of one replica count."""

    def __init__(self, procs: Processes, env: dict[str, str], tag: str, replicas: int) -> None:
        self.procs, self.env, self.tag, self.replicas = procs, env, tag, replicas
        self.bridges: dict[str, Any] = {}
        self.dispatchers: dict[str, Any] = {}

    def start_bridges(self) -> None:
        for i in range(self.replicas):
            name = f"bridge-{i}"
            env = {**self.env, "MQTT_CLIENT_ID": f"{self.tag}-bridge-{i}", "LOG_LEVEL": "INFO"}
            self.bridges[name] = self.procs.django_command(name, ["run_bridge"], env)
        for name in self.bridges:
            self.procs.wait_log(name, "bridge connected")
        time.sleep(0.5)  # the SUBACK follows the log line

    def start_dispatchers(self) -> None:
        for i in range(self.replicas):
            name = f"dispatcher-{i}"
            env = {**self.env, "MQTT_CLIENT_ID": f"{self.tag}-d{i}"}
            self.dispatchers[name] = self.procs.django_command(name, ["run_dispatcher"], env)

    def kill_bridges(self) -> None:
        for proc in self.bridges.values():
            self.procs.kill(proc)
        self.bridges = {}

    def stop(self) -> None:
        for proc in [*self.dispatchers.values(), *self.bridges.values()]:
            self.procs.stop(proc)
        self.bridges, self.dispatchers = {}, {}

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in {**self.bridges, **self.dispatchers}.items()}


def run_throughput(
    args: argparse.Namespace, stack: Stack, cpu_named: dict[str, int], database_url: str, profile_dir: Path | None
) -> dict[str, Any]:
    name = database_url.rpartition("/")[2]
    _throughput_run(min(args.tasks, 500))  # warm-up: connections, plans, caches
    rates, lost, doubled = [], 0, 0
    shares: list[dict[str, float]] = []
    waits: list[tuple[str, int]] = []
    wait_samples = 0
    for run in range(args.runs):
        profiles, sampler = [], None
        if profile_dir is not None and run == 0:
            for role, pid in stack.pids().items():
                path = profile_dir / f"{stack.replicas}x-{role}.txt"
                profiles.append(Profile(stack.procs, pid, str(path)))
            sampler = WaitSampler(database_url)
        cpu = Cpu(name, {**stack.pids(), **cpu_named})
        before = cpu.snapshot()
        rate, run_lost, run_doubled = _throughput_run(args.tasks)
        shares.append(Cpu.percent(before, cpu.snapshot()))
        for profile in profiles:
            profile.stop()
        if sampler is not None:
            waits, wait_samples = sampler.close(), sampler.samples
        rates.append(rate)
        lost, doubled = lost + run_lost, doubled + run_doubled
        stack.procs.check_alive()
    keys = shares[0].keys()
    return {
        "tasks_per_s": median(rates),
        "rates": rates,
        "cpu": {key: median([share.get(key, 0.0) for share in shares]) for key in keys},
        "lost": lost,
        "doubled": doubled,
        "waits": waits,
        "wait_samples": wait_samples,
    }


def run_drain(args: argparse.Namespace, stack: Stack, port: int, stats: DbStats) -> dict[str, float]:
    """N bridges drain a backlog queued in their sessions while they were down."""
    n = stack.replicas
    starts, ends = [f"mark-start-{i}" for i in range(n)], [f"mark-end-{i}" for i in range(n)]
    ids = [f"hb-{i}" for i in range(args.hb_agents)]
    messages = [_heartbeat(marker, 1) for marker in starts]
    messages += [_heartbeat(agent_id, r) for r in range(args.hb_rounds) for agent_id in ids]
    messages += [_heartbeat(marker, 1) for marker in ends]
    import psycopg

    with psycopg.connect(stats.url, autocommit=True) as conn:
        conn.execute("UPDATE agents SET last_seen_at = NULL WHERE id LIKE 'hb-%%' OR id LIKE 'mark-%%'")
    stack.kill_bridges()  # their sessions keep their turn of the share group's messages
    publisher = Publisher(port)
    try:
        publisher.publish(messages)
    finally:
        publisher.close()
    stack.start_bridges()
    cpu = Cpu(stats.name, stack.pids())
    before = cpu.snapshot()

    def ends_seen() -> bool:
        stack.procs.check_alive()
        return all(stamp is not None for stamp in stats.last_seen(ends).values())

    wait_until(ends_seen, 120 + len(messages) / 1000, "the end markers' heartbeats in the database", 0.2)
    shares = Cpu.percent(before, cpu.snapshot())
    seen = stats.last_seen([*starts, *ends])
    started = min(seen[marker].timestamp() for marker in starts)
    ended = max(seen[marker].timestamp() for marker in ends)
    stagger = max(seen[marker].timestamp() for marker in starts) - started
    touched = stats.count_seen_since("hb-", seen[starts[0]].replace(year=2000))
    count = len(messages) - 1
    return {
        "heartbeats_per_s": count / (ended - started),
        "seconds": ended - started,
        "stagger_s": stagger,
        "touched": touched,
        "bridge_cpu": sum(share for role, share in shares.items() if role.startswith("bridge")),
        "postgres_cpu": shares["postgres"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, each of bridge and dispatcher")
    parser.add_argument("--agents", type=int, default=60, help="simulated agents in all")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes sharing the agents")
    parser.add_argument("--max-concurrency", type=int, default=50, help="tasks each simulated agent may hold")
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per replica count (median)")
    parser.add_argument("--hb-agents", type=int, default=5000, help="agent ids in the heartbeat drain")
    parser.add_argument("--hb-rounds", type=int, default=10, help="heartbeats per agent id in the drain")
    parser.add_argument("--profile", type=Path, help="py-spy stacks and wait-event samples of the first run, here")
    parser.add_argument("--quick", action="store_true", help="1,000 tasks x 1 run, drain 2,000 ids x 5 rounds")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.runs, args.hb_agents, args.hb_rounds = 1000, 1, 2000, 5
    replica_counts = [int(n) for n in args.replicas.split(",")]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    procs = Processes()
    database_url = scratch_database_url("scale")
    failed = True
    results: list[tuple[int, dict[str, Any], dict[str, float]]] = []
    try:
        setup_django(database_url)
        from django.db import connection

        stats = DbStats(database_url)
        max_n = max(replica_counts)
        markers = [f"mark-{kind}-{i}" for kind in ("start", "end") for i in range(max_n)]
        _create_agents([f"hb-{i}" for i in range(args.hb_agents)] + markers, online=False)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE agents")
            cursor.execute("SHOW synchronous_commit")
            sync = cursor.fetchone()[0]
        connection.close()
        port = procs.mosquitto()
        mosquitto_pid = procs.children[-1][1].pid
        tag = f"scale-{os.getpid()}"
        env = role_env(
            database_url,
            port,
            tag,
            BRIDGE_OUTBOX_POLL_INTERVAL="0.05",  # as e2e_throughput: the bridge's fallback publisher polls often
            MQTT_RECEIVE_MAXIMUM="1000",
            LOG_LEVEL="WARNING",
        )
        print(
            f"synchronous_commit={sync}, replicas {replica_counts}, agents={args.agents} in {args.simulators} "
            f"simulator processes x max_concurrency {args.max_concurrency}, tasks/run={args.tasks}, runs={args.runs}, "
            f"drain {args.hb_agents} ids x {args.hb_rounds} rounds, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        simulators: dict[str, int] = {}
        prefix = "scale-"
        for n in replica_counts:
            stack = Stack(procs, env, tag, n)
            stack.start_bridges()
            if not simulators:  # after the first bridges subscribed: hellos reach them
                per = -(-args.agents // args.simulators)
                for s in range(args.simulators):
                    count = min(per, args.agents - s * per)
                    argv = [PYTHON, "-m", "aegis_agent.simulate", "--count", str(count), "--port", str(port)]
                    argv += ["--prefix", f"{prefix}{s}-", "--duration-ms", "0", "--heartbeat-s", "2"]
                    argv += ["--max-concurrency", str(args.max_concurrency), "--stats-every-s", "0"]
                    simulators[f"simulator-{s}"] = procs.start(f"simulator-{s}", [*argv, "--log-level", "WARNING"]).pid

                def all_online() -> bool:
                    procs.check_alive()
                    return _online(prefix) == args.agents

                wait_until(all_online, 30 + args.agents / 50, f"{args.agents} simulated agents online")
            stack.start_dispatchers()
            started = time.strftime("%H:%M:%S", time.gmtime())
            profile_dir = args.profile if args.profile and n == replica_counts[-1] else None
            if args.profile and n == replica_counts[0]:
                profile_dir = args.profile
            named = {**simulators, "mosquitto": mosquitto_pid}
            throughput = run_throughput(args, stack, named, database_url, profile_dir)
            for dispatcher in stack.dispatchers.values():
                procs.stop(dispatcher)
            stack.dispatchers = {}
            drain = run_drain(args, stack, port, stats)
            stack.stop()
            load = os.getloadavg()[0]
            print(
                f"{n} replica(s), from {started} UTC, load average {load:.2f}: "
                f"{throughput['tasks_per_s']:,.0f} tasks/s (runs {', '.join(f'{r:,.0f}' for r in throughput['rates'])})"
                ","
                f" drain {drain['heartbeats_per_s']:,.0f} hb/s in {drain['seconds']:.1f} s "
                f"(bridges started {drain['stagger_s']:.1f} s apart), lost: {throughput['lost']}, "
                f"doubled: {throughput['doubled']}",
                flush=True,
            )
            if throughput["waits"]:
                print(f"  pg_stat_activity, {throughput['wait_samples']} samples of the first run (active backends):")
                for event, hits in throughput["waits"]:
                    print(f"    {hits / throughput['wait_samples']:6.2f}  {event}")
            results.append((n, throughput, drain))
            with contextlib.suppress(Exception), connection.cursor() as cursor:  # the next count starts clean
                cursor.execute("TRUNCATE jobs, tasks, task_events, outbox_messages CASCADE")
                cursor.execute("VACUUM ANALYZE")
            connection.close()
        failed = False
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)

    base_t, base_d = results[0][1], results[0][2]
    print()
    header = f"{'replicas':>8}{'tasks/s':>9}{'ratio':>7}{'hb/s':>9}{'ratio':>7}"
    header += f"{'bridge CPU':>12}{'dispatcher CPU':>16}{'PG CPU':>8}{'broker':>8}{'sims':>6}{'drain PG':>10}"
    print(header)
    for n, throughput, drain in results:
        cpu = throughput["cpu"]
        bridges = [cpu[k] for k in sorted(cpu) if k.startswith("bridge")]
        dispatchers = [cpu[k] for k in sorted(cpu) if k.startswith("dispatcher")]
        sims = sum(v for k, v in cpu.items() if k.startswith("simulator"))
        print(
            f"{n:>8}{throughput['tasks_per_s']:>9,.0f}{throughput['tasks_per_s'] / base_t['tasks_per_s']:>7.2f}"
            f"{drain['heartbeats_per_s']:>9,.0f}{drain['heartbeats_per_s'] / base_d['heartbeats_per_s']:>7.2f}"
            f"{'+'.join(f'{v:.0f}' for v in bridges):>12}{'+'.join(f'{v:.0f}' for v in dispatchers):>16}"
            f"{cpu['postgres']:>8.0f}{cpu['mosquitto']:>8.0f}{sims:>6.0f}{drain['postgres_cpu']:>10.0f}"
        )
    print(
        "CPU: % of one core during the throughput runs (median), per process; PG = the backends serving the "
        "scratch database; drain PG = theirs during the heartbeat drain (bridges: "
        + ", ".join(f"{d['bridge_cpu']:.0f}" for _, _, d in results)
        + "). The machine has 2 cores."
    )
    lost = sum(t["lost"] for _, t, _ in results)
    doubled = sum(t["doubled"] for _, t, _ in results)
    untouched = [n for n, _, d in results if d["touched"] != args.hb_agents]
    print(f"drain: every agent's last_seen_at set in each run: {'yes' if not untouched else f'no ({untouched})'}")
    print(f"lost: {lost}, doubled: {doubled}")
    if lost or doubled or untouched:
        sys.exit(1)


if __name__ == "__main__":
    main()
