"""Heartbeat ingestion through a real bridge process into PostgreSQL, against one UPDATE per heartbeat.

    .venv/bin/python bench/heartbeats.py [--agents 10000] [--rounds 20] [--runs 3]
        [--fleet 10000 --heartbeat-s 2 --window-s 15] [--quick]

Scratch database ``<name>_bench_hb`` (from ``DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/aegis``), a private Mosquitto on a free port,
``manage.py run_bridge`` as a separate process with the default flush window
(``BRIDGE_HEARTBEAT_FLUSH_INTERVAL`` 1 s). Three measurements:

1. Naive baseline, in this process: one ORM ``UPDATE agents SET last_seen_at``
   per heartbeat (autocommit), ``--baseline`` of them.
2. Ingest capacity (drain): with the bridge stopped (its persistent session keeps
   its subscriptions), publish QoS 1 heartbeats for ``--agents`` ids,
   ``--rounds`` each, between two marker agents ``mark-start`` and ``mark-end``;
   then start the bridge and let it drain the backlog. Heartbeats/s =
   heartbeats between the markers / (``last_seen_at[mark-end]`` - ``last_seen_at[mark-start]``):
   both stamps are the bridge's clock at ingestion, so start-up is not counted.
   Every agent's ``last_seen_at`` must have been set. Bridge CPU is interpolated
   between those instants from psutil samples (20 Hz).
3. Live fleet: ``python -m aegis_agent.simulate --count --fleet --heartbeat-s``
   (QoS 0 heartbeats, separate process); once every agent is online, a
   ``--window-s`` window: heartbeats published (the simulator's counters),
   whether every agent's ``last_seen_at`` moved, and the bridge's CPU and RSS.

Database statements are counted on the server: ``xact_commit`` of
``pg_stat_database`` for the scratch database (every statement the bridge runs
outside ``atomic()`` is its own transaction; the only one inside is the outbox
poll's ``SELECT ... FOR UPDATE``, one per transaction) and ``n_tup_upd`` of
``agents`` in ``pg_stat_user_tables``. In the drain they cover the bridge's whole
life (start-up, the outbox publisher's idle polls every 0.5 s, the flushes, the
shutdown); in the live window every committed transaction in the database (hellos
are over before it starts). pg_stat_statements is not loaded on this server.

``--sizes 1000,10000`` measures memory per connected agent instead (the ``--sizes:`` options
below; docs/benchmarks.md, "Memory per connected agent"). That mode lives in
``bench/_heartbeat_sizes.py``: ``main`` parses its options here and calls its ``sizes_main``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    drop_database,
    median,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)

START, END = "mark-start", "mark-end"
TARGETS = {"heartbeats_per_s": 20_000, "statements_per_1000": 10, "rss_mb_10k": 200}


class DbStats:
    """Server-side counters of the scratch database, read on a fresh connection each time."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.name = database_url.rpartition("/")[2]

    def snapshot(self) -> dict[str, int]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            commits = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [self.name])
            xact = int(commits.fetchone()[0])
            upd = conn.execute("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'agents'").fetchone()
            return {"xact_commit": xact, "agents_updated": int(upd[0])}

    def last_seen(self, agent_ids: list[str]) -> dict[str, datetime | None]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute("SELECT id, last_seen_at FROM agents WHERE id = ANY(%s)", [agent_ids]).fetchall()
        return dict(rows)

    def count_seen_since(self, prefix: str, since: datetime) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM agents WHERE id LIKE %s AND last_seen_at >= %s", [prefix + "%", since]
            ).fetchone()
        return int(row[0])


class Sampler:
    """CPU seconds and RSS of one process, sampled every ``interval_s`` (20 Hz by default) on a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, int]] = []  # wall time, cpu seconds, rss bytes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                with self.process.oneshot():
                    times, rss = self.process.cpu_times(), self.process.memory_info().rss
            except Exception:
                return
            self.samples.append((time.time(), times.user + times.system, rss))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)

    def cpu_at(self, at: float) -> float:
        before = [s for s in self.samples if s[0] <= at]
        after = [s for s in self.samples if s[0] >= at]
        if not before or not after:
            return (before or after)[-1 if before else 0][1]
        (t0, c0, _), (t1, c1, _) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (at - t0) / (t1 - t0)

    def cpu_percent(self, start: float, end: float) -> float:
        return (self.cpu_at(end) - self.cpu_at(start)) / (end - start) * 100

    def rss_mb(self, start: float = 0.0, end: float = float("inf")) -> float:
        values = [rss for t, _, rss in self.samples if start <= t <= end]
        return max(values, default=0) / 2**20

    def rss_median_mb(self, start: float, end: float) -> float:
        return median([rss for t, _, rss in self.samples if start <= t <= end]) / 2**20


def _create_agents(ids: list[str], online: bool = True) -> None:
    from registry.models import Agent, Connectivity

    state = Connectivity.ONLINE if online else Connectivity.OFFLINE
    Agent.objects.bulk_create(
        [Agent(pk=agent_id, name=agent_id, connectivity=state, capabilities=["noop"]) for agent_id in ids],
        batch_size=2000,
    )


def run_baseline(count: int, agent_ids: list[str], stats: DbStats) -> dict[str, float]:
    """One ORM UPDATE per heartbeat, as a naive bridge would do (autocommit: one transaction each)."""
    from django.db import connection
    from django.utils import timezone

    from registry.models import Agent

    statements = 0

    def counter(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    connection.close()
    before = stats.snapshot()
    connection.ensure_connection()
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        for i in range(count):
            Agent.objects.filter(pk=agent_ids[i % len(agent_ids)]).update(last_seen_at=timezone.now())
        elapsed = time.perf_counter() - started
    connection.close()  # the backend flushes its statistics as it exits
    time.sleep(0.2)
    after = stats.snapshot()
    return {
        "heartbeats_per_s": count / elapsed,
        "statements_per_1000": statements / count * 1000,
        "xact_per_1000": (after["xact_commit"] - before["xact_commit"]) / count * 1000,
        "rows_per_1000": (after["agents_updated"] - before["agents_updated"]) / count * 1000,
    }


class Publisher:
    """One paho MQTT 5 client publishing pre-encoded heartbeats at QoS 1 with no inflight cap."""

    def __init__(self, port: int) -> None:
        import socket

        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hb-pub-{os.getpid()}", protocol=5)
        self.client.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, messages: list[tuple[str, bytes]], chunk: int = 20_000) -> None:
        """In chunks: packet ids are 16-bit, so no more than 65,535 may await their PUBACK."""
        for offset in range(0, len(messages), chunk):
            infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages[offset : offset + chunk]]
            for info in infos:
                info.wait_for_publish(60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _heartbeat(agent_id: str, seq: int) -> tuple[str, bytes]:
    from aegis_agent import wire

    return wire.Topics(agent_id).heartbeat, wire.encode(wire.heartbeat(seq, []))


def run_drain(
    procs: Processes, env: dict[str, str], port: int, agent_ids: list[str], rounds: int, stats: DbStats
) -> dict[str, float]:
    messages = [_heartbeat(START, 1)]
    messages += [_heartbeat(agent_id, r) for r in range(rounds) for agent_id in agent_ids]
    messages.append(_heartbeat(END, 1))
    with _connection_closed():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("UPDATE agents SET last_seen_at = NULL")
    publisher = Publisher(port)
    try:
        publisher.publish(messages)  # queued in the stopped bridge's session
    finally:
        publisher.close()
    before = stats.snapshot()
    bridge = procs.django_command("bridge", ["run_bridge"], env)
    sampler = Sampler(bridge.pid)
    try:

        def end_seen() -> bool:
            procs.check_alive()
            return stats.last_seen([END])[END] is not None

        wait_until(end_seen, 120 + len(messages) / 1000, "the end marker's heartbeat in the database", 0.2)
        seen = stats.last_seen([START, END])
        started, ended = seen[START].timestamp(), seen[END].timestamp()
        time.sleep(0.2)  # the sampler's next sample
        touched = stats.count_seen_since("hb-", datetime.fromtimestamp(0, UTC))
    finally:
        procs.kill(bridge)  # keeps the session: the next run queues its backlog there
        sampler.close()
    time.sleep(0.2)
    after = stats.snapshot()
    count = len(messages) - 1  # heartbeats ingested after the start marker, the end marker included
    return {
        "heartbeats_per_s": count / (ended - started),
        "xact_per_1000": (after["xact_commit"] - before["xact_commit"]) / count * 1000,
        "rows_per_1000": (after["agents_updated"] - before["agents_updated"]) / count * 1000,
        "cpu_percent": sampler.cpu_percent(started, ended),
        "rss_mb": sampler.rss_mb(started, ended),
        "touched": touched,
        "heartbeats": count,
        "seconds": ended - started,
    }


class _connection_closed:
    """Use the bench's Django connection for a moment, then close it so it adds nothing to the counters."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        from django.db import connection

        connection.close()


_STATS_LINE = re.compile(r"^(\S+) INFO aegis_agent\.simulate online=(\d+) (\{.*\})$")  # LOG_FORMAT=plain


def _simulator_counts(log: str) -> list[tuple[float, int, int]]:
    """(wall time, online, heartbeats published) from the simulator's periodic stats lines."""
    rows = []
    for line in log.splitlines():
        match = _STATS_LINE.match(line)
        if match:
            at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
            counters = json.loads(match.group(3).replace("'", '"'))
            rows.append((at, int(match.group(2)), int(counters["heartbeats"])))
    return rows


def run_live(
    procs: Processes, env: dict[str, str], port: int, fleet: int, heartbeat_s: float, window_s: float, stats: DbStats
) -> dict[str, float]:
    prefix = "hb-"
    with _connection_closed():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("UPDATE agents SET connectivity = 'offline', last_seen_at = NULL")
    bridge = procs.django_command("bridge", ["run_bridge"], env)
    procs.wait_log("bridge", "bridge connected")
    sampler = Sampler(bridge.pid)
    simulator = procs.start(
        "simulator",
        [
            PYTHON,
            "-m",
            "aegis_agent.simulate",
            "--count",
            str(fleet),
            "--port",
            str(port),
            "--prefix",
            prefix,
            "--heartbeat-s",
            str(heartbeat_s),
            "--stats-every-s",
            "1",
            "--connect-workers",
            "8",
        ],
    )
    try:
        connect_started = time.monotonic()

        def all_online() -> bool:
            procs.check_alive()
            return _online_count(stats, prefix) >= fleet

        wait_until(all_online, 60 + fleet / 50, f"{fleet} simulated agents online", 0.5)
        connect_s = time.monotonic() - connect_started
        time.sleep(max(2.0, heartbeat_s))  # the hellos' tail and the first heartbeats
        before = stats.snapshot()
        window_start = time.time()
        since = datetime.now(UTC)
        time.sleep(window_s)
        window_end = time.time()
        after = stats.snapshot()
        time.sleep(1.5)  # let the last flush land
        touched = stats.count_seen_since(prefix, since)
        procs.check_alive()
        counts = [row for row in _simulator_counts(procs.log_of("simulator")) if window_start <= row[0] <= window_end]
        published = counts[-1][2] - counts[0][2] if len(counts) >= 2 else 0
        published_s = counts[-1][0] - counts[0][0] if len(counts) >= 2 else 1.0
        heartbeats_in_window = published / published_s * (window_end - window_start)
        return {
            "heartbeats_per_s": published / published_s,
            "xact_per_1000": (after["xact_commit"] - before["xact_commit"]) / max(heartbeats_in_window, 1) * 1000,
            "rows_per_1000": (after["agents_updated"] - before["agents_updated"]) / max(heartbeats_in_window, 1) * 1000,
            "cpu_percent": sampler.cpu_percent(window_start, window_end),
            "rss_mb": sampler.rss_mb(window_start, window_end),
            "rss_mb_max": sampler.rss_mb(),
            "touched": touched,
            "connect_s": connect_s,
        }
    finally:
        procs.stop(simulator, grace_s=30)
        procs.stop(bridge)
        sampler.close()


def _online_count(stats: DbStats, prefix: str) -> int:
    import psycopg

    with psycopg.connect(stats.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM agents WHERE id LIKE %s AND connectivity = 'online'", [prefix + "%"]
        ).fetchone()
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10_000, help="agent ids in the drain")
    parser.add_argument("--rounds", type=int, default=20, help="heartbeats per agent id in the drain")
    parser.add_argument("--runs", type=int, default=3, help="drain runs (median)")
    parser.add_argument("--baseline", type=int, default=3000, help="naive one-UPDATE-per-heartbeat count")
    parser.add_argument("--fleet", type=int, default=10_000, help="simulated agents in the live run (0: skip)")
    parser.add_argument(
        "--heartbeat-s", type=float, help="seconds between an agent's heartbeats (live: 2, --sizes: 10, the agent's)"
    )
    parser.add_argument("--window-s", type=float, default=15.0, help="live run: measured window")
    parser.add_argument("--quick", action="store_true", help="2,000 ids x 10 rounds, 1 drain, 2,000 agents live")
    parser.add_argument("--sizes", help="memory per connected agent at these fleet sizes, e.g. 1000,10000,50000")
    parser.add_argument("--per-process", type=int, default=10_000, help="--sizes: agents per simulator process")
    parser.add_argument("--backlog-rounds", default="5,20", help="--sizes: drains of --agents ids x these rounds")
    parser.add_argument(
        "--hello-wait-s", type=float, default=900, help="--sizes: the longest wait for the fleet's hellos, then measure"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="--sizes: bridge heap snapshots, diffed by line")
    parser.add_argument(
        "--unbounded-at",
        type=int,
        default=0,
        help="--sizes: first a baseline at N agents with the bridge's inbound queue unbounded, as before 8805390",
    )
    args = parser.parse_args()
    if args.sizes:
        from bench._heartbeat_sizes import sizes_main

        sizes_main(args)
        return
    if args.heartbeat_s is None:
        args.heartbeat_s = 2.0
    if args.quick:
        args.agents, args.rounds, args.runs, args.baseline = 2000, 10, 1, 1000
        args.fleet, args.heartbeat_s, args.window_s = 2000, 0.5, 6.0

    procs = Processes()
    database_url = scratch_database_url("bench_hb")
    failed = True
    try:
        setup_django(database_url)
        from django.db import connection

        stats = DbStats(database_url)
        agent_ids = [f"hb-{i}" for i in range(max(args.agents, args.fleet))]
        _create_agents([*agent_ids, START, END])
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE agents")
            cursor.execute("SHOW synchronous_commit")
            sync = cursor.fetchone()[0]
        print(
            f"synchronous_commit={sync}, flush window 1 s (default), drain: {args.agents} ids x {args.rounds} rounds, "
            f"runs={args.runs}; live: {args.fleet} agents every {args.heartbeat_s}s, window {args.window_s}s",
            flush=True,
        )
        baseline = run_baseline(args.baseline, agent_ids[: args.agents], stats)
        connection.close()

        port = procs.mosquitto()
        tag = f"bench-hb-{os.getpid()}"
        env = role_env(database_url, port, tag, MQTT_RECEIVE_MAXIMUM="1000", LOG_LEVEL="INFO")
        first = procs.django_command("bridge", ["run_bridge"], env)  # creates its persistent session
        procs.wait_log("bridge", "bridge connected")
        time.sleep(0.5)
        procs.kill(first)  # keeps the session: the drain runs queue heartbeats in it
        drains = [run_drain(procs, env, port, agent_ids[: args.agents], args.rounds, stats) for _ in range(args.runs)]
        live = run_live(procs, env, port, args.fleet, args.heartbeat_s, args.window_s, stats) if args.fleet else None
        failed = False
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)

    def med(key: str) -> float:
        return median([d[key] for d in drains])

    print()
    print(f"{'variant':<40}{'hb/s':>10}{'stmt/1000':>11}{'rows/1000':>11}{'CPU %':>8}{'RSS MB':>8}{'vs naive':>10}")
    print(
        f"{'naive: ORM UPDATE per heartbeat':<40}{baseline['heartbeats_per_s']:>10,.0f}"
        f"{baseline['xact_per_1000']:>11.1f}{baseline['rows_per_1000']:>11.0f}{'-':>8}{'-':>8}{1.0:>10.2f}"
    )
    label = f"bridge drain ({args.agents} ids, median)"
    ratio = med("heartbeats_per_s") / baseline["heartbeats_per_s"]
    print(
        f"{label:<40}{med('heartbeats_per_s'):>10,.0f}{med('xact_per_1000'):>11.2f}{med('rows_per_1000'):>11.0f}"
        f"{med('cpu_percent'):>8.0f}{med('rss_mb'):>8.0f}{ratio:>10.2f}"
    )
    if live is not None:
        label = f"bridge live ({args.fleet} agents / {args.heartbeat_s}s)"
        print(
            f"{label:<40}{live['heartbeats_per_s']:>10,.0f}{live['xact_per_1000']:>11.2f}{live['rows_per_1000']:>11.0f}"
            f"{live['cpu_percent']:>8.0f}{live['rss_mb']:>8.0f}{'-':>10}"
        )
    print()
    print(
        "drain runs, hb/s: "
        + ", ".join(f"{d['heartbeats_per_s']:,.0f} ({d['heartbeats']} in {d['seconds']:.1f}s)" for d in drains)
    )
    print(f"drain: agents whose last_seen_at was set: {drains[-1]['touched']} of {args.agents}")
    if live is not None:
        print(
            f"live: {args.fleet} agents online after {live['connect_s']:.1f}s; last_seen_at moved in the window for "
            f"{live['touched']} of {args.fleet}; bridge RSS max over the run {live['rss_mb_max']:.0f} MB"
        )
    print(f"naive baseline: {baseline['statements_per_1000']:.0f} statements per 1,000 heartbeats (client-side count)")
    print(
        "stmt/1000 = committed transactions in the scratch database per 1,000 heartbeats (pg_stat_database); "
        "rows/1000 = agents rows updated (pg_stat_user_tables)"
    )
    print(
        f"targets (not asserted): >= {TARGETS['heartbeats_per_s']:,} hb/s ingested, <= {TARGETS['statements_per_1000']}"
        f" statements per 1,000 heartbeats, 10,000 agents connected with the bridge < {TARGETS['rss_mb_10k']} MB RSS"
    )


if __name__ == "__main__":
    main()
