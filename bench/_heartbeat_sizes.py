"""``bench/heartbeats.py --sizes``: memory per connected agent (docs/benchmarks.md, "Memory per connected agent").

    .venv/bin/python bench/heartbeats.py --sizes 1000,10000 [--per-process 10000] [--heartbeat-s 10]
        [--window-s 15] [--agents 10000 --backlog-rounds 5,20] [--hello-wait-s 900] [--tracemalloc]
        [--unbounded-at 2000]

Not a script: ``bench/heartbeats.py`` parses the options and calls ``sizes_main``. Scratch database
``<name>_bench_mem``; for each size a fresh private Mosquitto (one listener per simulator process) and a
fresh ``run_bridge`` with production settings. The bridge's and the broker's RSS idle, then with ``size``
simulated agents (``python -m aegis_agent.simulate``, ``--per-process`` a process) connected, their hellos
applied and heartbeating (QoS 0); a thread that a ``sitecustomize`` hook puts in the bridge logs its
``inbound`` queue. ``--backlog-rounds``: first the bridge's RSS while it drains QoS 1 heartbeats queued for
``--agents`` ids while it was down (``run_drain`` of ``bench/heartbeats.py``).

What both modes use (``DbStats``, ``Sampler``, ``run_drain``, ...) lives in ``bench/heartbeats.py`` and is
imported from there; that module imports this one only inside ``main``, so there is no import cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench._infra import (
    MOSQUITTO,
    PYTHON,
    ROOT,
    Processes,
    drop_database,
    free_port,
    median,
    role_env,
    scratch_database_url,
    setup_django,
    wait_port,
    wait_until,
)
from bench.heartbeats import (
    END,
    START,
    DbStats,
    Sampler,
    _connection_closed,
    _create_agents,
    _online_count,
    _simulator_counts,
    run_drain,
)

FLEET_PREFIX = "fl"  # --sizes agent ids: fl<simulator process>-<n>
# Written as sitecustomize.py for the bridges --sizes starts, enabled by environment variables. SIGUSR1 dumps a
# tracemalloc snapshot (--tracemalloc; tracing starts at the first, so a snapshot holds what was allocated since and
# is still alive); AEGIS_BENCH_UNBOUNDED_INBOUND gives the bridge a plain unbounded queue.Queue as ``inbound``, as it
# had before 8805390 (the baseline of --unbounded-at); AEGIS_BENCH_WATCH_FILE gets a line twice a second from a thread
# in the bridge: RSS, the inbound queue's depth and bytes per queued message, paho's queues.
_BRIDGE_HOOK = """\
import importlib.machinery, json, os, signal, sys, tracemalloc

def _aegis_dump_heap(_signum, _frame):
    if not tracemalloc.is_tracing():  # from the first dump on: tracing the start-up would take minutes
        tracemalloc.start(int(os.environ["AEGIS_TRACEMALLOC_FRAMES"]))
    directory = os.environ["AEGIS_TRACEMALLOC_DIR"]
    number = len([name for name in os.listdir(directory) if name.endswith(".snapshot")])
    rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1]
    tracemalloc.take_snapshot().dump(f"{directory}/tmp")
    current, peak = tracemalloc.get_traced_memory()
    with open(f"{directory}/{number}.json", "w") as out:
        json.dump({"traced": current, "traced_peak": peak, "rss": int(rss) * 1024}, out)
    os.rename(f"{directory}/tmp", f"{directory}/{number}.snapshot")

if os.environ.get("AEGIS_TRACEMALLOC_DIR"):
    signal.signal(signal.SIGUSR1, _aegis_dump_heap)


def _aegis_watch(bridge, path):
    # Twice a second: RSS, the inbound queue's depth and the deep size of its first 100 items, paho's queues.
    import itertools, sys, threading, time

    def size_of(item):
        return sum(sys.getsizeof(getattr(item, name, None) or 0) for name in ("topic", "payload")) + sys.getsizeof(item)

    def run():
        with open(path, "a") as out:
            while True:
                time.sleep(0.5)
                rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1]
                inbound = bridge.inbound
                with inbound.mutex:
                    head = list(itertools.islice(inbound.queue, 100))
                each = sum(size_of(item) for item in head) / len(head) if head else 0
                client = bridge.client
                row = [time.time(), int(rss) * 1024, inbound.qsize(), each, bridge._unacknowledged,
                       len(client._out_packet), len(client._out_messages), len(bridge.heartbeats)]
                out.write(" ".join(str(value) for value in row) + "\\n")
                out.flush()

    threading.Thread(target=run, name="bench-watch", daemon=True).start()


class _BridgeHook:
    def find_spec(self, name, path, target=None):
        if name != "broker.bridge":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            init = module.Bridge.__init__

            def __init__(bridge, *args, **kwargs):
                init(bridge, *args, **kwargs)
                from broker.client import InboundQueue

                if os.environ.get("AEGIS_BENCH_UNBOUNDED_INBOUND") and isinstance(bridge.inbound, InboundQueue):
                    import queue

                    bridge.inbound = queue.Queue()  # as before 8805390: QoS 0 unbounded
                if os.environ.get("AEGIS_BENCH_WATCH_FILE"):
                    _aegis_watch(bridge, os.environ["AEGIS_BENCH_WATCH_FILE"])

            module.Bridge.__init__ = __init__

        spec.loader.exec_module = exec_module
        return spec

if os.environ.get("AEGIS_BENCH_UNBOUNDED_INBOUND") or os.environ.get("AEGIS_BENCH_WATCH_FILE"):
    sys.meta_path.insert(0, _BridgeHook())
"""


def _bridge_hook(procs: Processes, unbounded_inbound: bool) -> dict[str, str]:
    """The environment that loads ``_BRIDGE_HOOK`` into the bridges (``PYTHONPATH``)."""
    hook = procs.tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_BRIDGE_HOOK)
    return {"PYTHONPATH": str(hook), **({"AEGIS_BENCH_UNBOUNDED_INBOUND": "1"} if unbounded_inbound else {})}


def _fleet_processes(size: int, per_process: int) -> list[tuple[str, int]]:
    """(id prefix, agent count) of each simulator process for a fleet of ``size``."""
    return [(f"{FLEET_PREFIX}{p}-", min(per_process, size - p * per_process)) for p in range(-(-size // per_process))]


def _raise_open_files(needed: int) -> str:
    """The broker holds a descriptor per connection: raise RLIMIT_NOFILE (inherited by every child) if needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"open files limit {soft} (enough)"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        sys.exit(
            f"the broker needs {needed} open files; ulimit -n is {soft}, hard {hard}, and this process may not raise "
            "the hard limit (it needs CAP_SYS_RESOURCE): start it from a shell with a higher ulimit -Hn"
        )
    return f"open files limit raised {soft} -> {needed} (RLIMIT_NOFILE, inherited by the broker and the simulators)"


def _broker(procs: Processes, name: str, listeners: int) -> tuple[Any, list[int]]:
    """A private Mosquitto like ``Processes.mosquitto``, with one listener per simulator process: a loopback
    client port serves one connection per (address, port) pair, so 50,000 agents need several listeners."""
    ports: list[int] = []
    while len(ports) < listeners:
        port = free_port()
        if port not in ports:
            ports.append(port)
    conf = procs.tmp / f"{name}.conf"
    conf.write_text(
        "".join(f"listener {port} 127.0.0.1\n" for port in ports)
        + "allow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_queued_messages 1000000\n"
        "max_inflight_messages 0\nlog_type error\nlog_type warning\n"
    )
    broker = procs.start(name, [MOSQUITTO, "-c", str(conf)])
    for port in ports:
        wait_port(port)
    return broker, ports


class HeapDumps:
    """tracemalloc snapshots of the bridge, taken on SIGUSR1 by a ``sitecustomize`` hook (``--tracemalloc``)."""

    def __init__(self, procs: Processes) -> None:
        self.directory = procs.tmp / "heap"
        self.directory.mkdir()
        self.env = {"AEGIS_TRACEMALLOC_FRAMES": "12", "AEGIS_TRACEMALLOC_DIR": str(self.directory)}
        self.labels: list[str] = []

    def dump(self, pid: int, label: str) -> None:
        import signal

        os.kill(pid, signal.SIGUSR1)
        number = len(self.labels)
        self.labels.append(label)
        wait_until(lambda: (self.directory / f"{number}.snapshot").exists(), 300, f"heap snapshot {label}", 0.2)

    def report(self, top: int = 12) -> None:
        """What the bridge holds at each size beyond what it held idle, by the allocating line (and the line of
        this project or paho that led there). Tracing starts at the idle dump, so ``traced`` is what Python
        allocated since and still holds; RSS also has C libraries and freed-but-kept arenas."""
        import tracemalloc

        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        snaps = [tracemalloc.Snapshot.load(str(self.directory / f"{n}.snapshot")) for n in range(len(self.labels))]
        meta = [json.loads((self.directory / f"{n}.json").read_text()) for n in range(len(self.labels))]
        print("\nbridge heap (tracemalloc, 12 frames; the bridge runs slower while traced):")
        for label, m in zip(self.labels, meta, strict=True):
            print(
                f"  {label:<28} traced {m['traced'] / 2**20:7.1f} MB (peak {m['traced_peak'] / 2**20:7.1f}), "
                f"RSS {m['rss'] / 2**20:7.1f} MB"
            )
        for number in range(1, len(snaps), 2):  # each bridge: its idle dump, then its dump with the fleet
            grouped: dict[tuple[str, str], list[int]] = {}
            base = snaps[number - 1].filter_traces(filters)
            for stat in snaps[number].filter_traces(filters).compare_to(base, "traceback"):
                frames = list(stat.traceback)  # oldest first
                ours = next((f for f in reversed(frames) if _ours(f.filename)), frames[-1])
                key = (f"{_short(ours.filename)}:{ours.lineno}", f"{_short(frames[-1].filename)}:{frames[-1].lineno}")
                sums = grouped.setdefault(key, [0, 0])
                sums[0] += stat.size_diff
                sums[1] += stat.count_diff
            total = sum(size for size, _ in grouped.values())
            print(
                f"\n  {self.labels[number]} minus {self.labels[number - 1]}: {total / 2**20:+.1f} MB traced; largest:"
            )
            for (ours_at, at), (size, count) in sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]:
                print(f"    {size / 2**20:+8.2f} MB {count:+9d} blocks  {ours_at}  ->  {at}")


def _ours(filename: str) -> bool:
    return (filename.startswith(str(ROOT)) and "/.venv/" not in filename) or "/paho/" in filename


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1].lstrip("/")
    return filename


def run_size(
    procs: Processes,
    database_url: str,
    stats: DbStats,
    size: int,
    per_process: int,
    heartbeat_s: float,
    window_s: float,
    heap: HeapDumps | None,
    hook_env: dict[str, str],
    hello_wait_s: float,
) -> dict[str, float]:
    """A fresh broker and bridge; RSS idle, then with ``size`` simulated agents connected and heartbeating."""
    import psutil

    with _connection_closed():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("UPDATE agents SET connectivity = 'offline', last_seen_at = NULL")
    fleet = _fleet_processes(size, per_process)
    broker, ports = _broker(procs, f"mosquitto-{size}", len(fleet))
    tag = f"bench-mem-{os.getpid()}-{size}"
    watch = procs.tmp / f"watch-{size}-{len(list(procs.tmp.glob('watch-*')))}.txt"  # a size may run twice
    hooks = {**hook_env, "AEGIS_BENCH_WATCH_FILE": str(watch), **(heap.env if heap else {})}
    env = role_env(database_url, ports[0], tag, LOG_LEVEL="INFO", **hooks)
    bridge = procs.django_command(f"bridge-{size}", ["run_bridge"], env)
    procs.wait_log(f"bridge-{size}", "bridge connected")
    bridge_rss, broker_rss = Sampler(bridge.pid, 0.25), Sampler(broker.pid, 0.25)
    simulators: list[Any] = []
    try:
        time.sleep(3.0)  # connected, subscribed, the first outbox polls and flushes done
        idle_end = time.time()
        idle = {
            "bridge": bridge_rss.rss_median_mb(idle_end - 2.0, idle_end),
            "broker": broker_rss.rss_median_mb(idle_end - 2.0, idle_end),
        }
        if heap:
            heap.dump(bridge.pid, f"idle before {size:,}")
        connect_started = time.monotonic()
        for number, (prefix, count) in enumerate(fleet):
            argv = [PYTHON, "-m", "aegis_agent.simulate", "--count", str(count), "--port", str(ports[number])]
            argv += ["--prefix", prefix, "--heartbeat-s", str(heartbeat_s), "--stats-every-s", "1"]
            simulators.append(procs.start(f"simulator-{size}-{number}", [*argv, "--connect-workers", "8"]))

        def all_connected() -> bool:
            procs.check_alive()
            return all("agents online after" in procs.log_of(f"simulator-{size}-{n}") for n in range(len(fleet)))

        wait_until(all_connected, 120 + size / 20, f"{size} simulated agents connected to the broker", 0.5)
        connect_s = time.monotonic() - connect_started

        def hellos_applied() -> bool:
            procs.check_alive()
            return _online_count(stats, FLEET_PREFIX) >= size or time.monotonic() > hello_deadline

        # Applying a hello costs several round trips: a fleet's hellos take minutes on a busy machine.
        hello_deadline = time.monotonic() + hello_wait_s
        wait_until(hellos_applied, hello_wait_s + 60, "the hellos applied", 0.5)
        online_s = time.monotonic() - connect_started
        pending_hellos = size - _online_count(stats, FLEET_PREFIX)
        time.sleep(heartbeat_s + 2.0)  # every agent's first heartbeat, the hellos' tail
        window_start, since = time.time(), datetime.now(UTC)
        sim_rss: list[int] = []
        while time.time() < window_start + window_s:
            time.sleep(1.0)
            sim_rss.append(sum(psutil.Process(p.pid).memory_info().rss for p in simulators))
        window_end = time.time()
        time.sleep(2.5)  # the last flush lands
        touched = stats.count_seen_since(FLEET_PREFIX, since)
        if touched < size:  # still behind hellos, in the broker's queue for the bridge: lost only if never applied

            def all_seen() -> bool:
                procs.check_alive()
                return stats.count_seen_since(FLEET_PREFIX, since) >= size

            with contextlib.suppress(TimeoutError):
                wait_until(all_seen, hello_wait_s, f"a heartbeat of each of {size} agents", 1.0)
            late = stats.count_seen_since(FLEET_PREFIX, since) - touched
            touched += late
        procs.check_alive()
        published = 0.0
        for number in range(len(fleet)):
            counts = [
                row
                for row in _simulator_counts(procs.log_of(f"simulator-{size}-{number}"))
                if window_start <= row[0] <= window_end
            ]
            if len(counts) >= 2:
                published += (counts[-1][2] - counts[0][2]) / (counts[-1][0] - counts[0][0])
        if heap:
            heap.dump(bridge.pid, f"{size:,} agents")
        rows = [[float(value) for value in line.split()] for line in watch.read_text().splitlines() if line]
        deepest = max(rows, key=lambda row: row[2], default=[0.0] * 8)
        return {
            "inbound_max": deepest[2],
            "inbound_max_mb": deepest[2] * deepest[3] / 2**20,
            "inbound_max_rss": deepest[1] / 2**20,
            "inbound_window": max((row[2] for row in rows if window_start <= row[0] <= window_end), default=0.0),
            "paho_out_max": max((row[5] for row in rows), default=0.0),
            "size": size,
            "processes": len(fleet),
            "connect_s": connect_s,
            "heartbeats_per_s": published,
            "touched": touched,
            "online_s": online_s,
            "pending_hellos": pending_hellos,
            "bridge_idle": idle["bridge"],
            "broker_idle": idle["broker"],
            "bridge": bridge_rss.rss_median_mb(window_start, window_end),
            "bridge_max": bridge_rss.rss_mb(),
            "bridge_cpu": bridge_rss.cpu_percent(window_start, window_end),
            "broker": broker_rss.rss_median_mb(window_start, window_end),
            "broker_max": broker_rss.rss_mb(),
            "simulators": median(sim_rss) / 2**20,
        }
    finally:
        for simulator in simulators:
            procs.stop(simulator, grace_s=60)
        procs.stop(bridge)
        procs.stop(broker)
        bridge_rss.close()
        broker_rss.close()


def run_backlog(
    procs: Processes,
    database_url: str,
    stats: DbStats,
    agent_ids: list[str],
    rounds: list[int],
    hook_env: dict[str, str],
) -> list[dict[str, float]]:
    """The bridge stopped while QoS 1 heartbeats queue in its session, then started: RSS during the drain,
    for backlogs of different depth (bounded memory: the same RSS whatever the depth)."""
    broker, ports = _broker(procs, "mosquitto-backlog", 1)
    env = role_env(database_url, ports[0], f"bench-mem-{os.getpid()}", LOG_LEVEL="INFO", **hook_env)
    try:
        first = procs.django_command("bridge", ["run_bridge"], env)  # creates its persistent session
        procs.wait_log("bridge", "bridge connected")
        time.sleep(0.5)
        procs.kill(first)
        return [run_drain(procs, env, ports[0], agent_ids, n, stats) for n in rounds]
    finally:
        procs.stop(broker)


def sizes_main(args: argparse.Namespace) -> None:
    sizes = sorted(int(size) for size in args.sizes.split(","))
    limits = _raise_open_files(max(sizes) + 4096)
    heartbeat_s = args.heartbeat_s if args.heartbeat_s is not None else 10.0
    procs = Processes()
    database_url = scratch_database_url("bench_mem")
    heap = HeapDumps(procs) if args.tracemalloc else None
    hook_env = _bridge_hook(procs, False)
    failed, rows, drains = True, [], []
    load = os.getloadavg()
    started = datetime.now(UTC)
    try:
        setup_django(database_url)
        from django.db import connection

        stats = DbStats(database_url)
        fleet_ids = [
            f"{prefix}{n}" for prefix, count in _fleet_processes(max(sizes), args.per_process) for n in range(count)
        ]
        backlog_ids = [f"hb-{n}" for n in range(args.agents)]
        _create_agents([*fleet_ids, *backlog_ids, START, END], online=False)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE agents")
        connection.close()
        print(
            f"{started:%Y-%m-%d %H:%M} UTC, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; sizes {sizes}, "
            f"heartbeat every {heartbeat_s}s (QoS 0), window {args.window_s}s, up to {args.per_process} agents per "
            f"simulator process; {limits}; bridge with production settings (MQTT_RECEIVE_MAXIMUM and "
            f"BRIDGE_BATCH_SIZE defaults){'; tracemalloc on' if heap else ''}",
            flush=True,
        )
        if args.backlog_rounds:
            rounds = [int(n) for n in args.backlog_rounds.split(",")]
            drains = run_backlog(procs, database_url, stats, backlog_ids, rounds, hook_env)
        # The baseline row first: at --unbounded-at agents, the bridge's inbound queue as it was before 8805390.
        runs = [(args.unbounded_at, _bridge_hook(procs, True))] if args.unbounded_at else []
        for size, env_hooks in [*runs, *((size, hook_env) for size in sizes)]:
            row = run_size(
                procs,
                database_url,
                stats,
                size,
                args.per_process,
                heartbeat_s,
                args.window_s,
                heap,
                env_hooks,
                args.hello_wait_s,
            )
            row["bounded"] = float("AEGIS_BENCH_UNBOUNDED_INBOUND" not in env_hooks)
            rows.append(row)
            print(
                f"  {size:,} agents: bridge {row['bridge']:.0f} MB (max {row['bridge_max']:.0f}), broker "
                f"{row['broker']:.1f} MB, simulators {row['simulators']:.0f} MB, connected after "
                f"{row['connect_s']:.0f}s, hellos applied after {row['online_s']:.0f}s",
                flush=True,
            )
        if heap is not None:
            heap.report()  # before stop_all, which removes the snapshots' directory
        failed = False
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)
    _print_sizes(rows, drains, args, heartbeat_s)


def _print_sizes(
    rows: list[dict[str, float]], drains: list[dict[str, float]], args: argparse.Namespace, heartbeat_s: float
) -> None:
    print()
    print(
        f"{'agents':>7}{'inbound':>9}{'sims':>5}{'hb/s':>7}{'bridge MB':>10}{'max':>6}{'CPU %':>6}{'MB/1k':>7}"
        f"{'vs idle':>8}{'inbound max':>12}{'MB':>6}{'broker MB':>10}{'MB/1k':>7}{'sim MB':>8}{'MB/1k':>7}"
        f"{'conn s':>7}{'hello s':>8}{'pending':>8}"
    )
    lost = 0
    for row in rows:
        n = row["size"] / 1000
        lost += int(row["size"] - row["touched"])
        print(
            f"{row['size']:>7,}{'bounded' if row['bounded'] else 'unbound':>9}{row['processes']:>5}"
            f"{row['heartbeats_per_s']:>7,.0f}{row['bridge']:>10.1f}"
            f"{row['bridge_max']:>6.0f}{row['bridge_cpu']:>6.0f}{(row['bridge'] - row['bridge_idle']) / n:>7.2f}"
            f"{row['bridge'] / row['bridge_idle']:>8.2f}{row['inbound_max']:>12,.0f}{row['inbound_max_mb']:>6.0f}"
            f"{row['broker']:>10.1f}{(row['broker'] - row['broker_idle']) / n:>7.2f}"
            f"{row['simulators']:>8.0f}{row['simulators'] / n:>7.1f}{row['connect_s']:>7.0f}{row['online_s']:>8.0f}"
            f"{row['pending_hellos']:>8,.0f}"
        )
    if rows:
        print(
            f"idle (no agent) bridge {median([r['bridge_idle'] for r in rows]):.1f} MB, broker "
            f"{median([r['broker_idle'] for r in rows]):.1f} MB. RSS: median over the {args.window_s:.0f}s window "
            f"(agents heartbeating every {heartbeat_s:g}s); max: the bridge's over its run, the hellos' storm included;"
            " MB/1k: (RSS - the same process's idle RSS) per 1,000 agents; vs idle: RSS / idle RSS; inbound max: the"
            " deepest the bridge's inbound queue was (messages), MB: its estimated size then (the deep size of its"
            " first 100 messages x depth). Simulators: RSS of all their processes, per 1,000 agents simulated. conn s:"
            " every agent connected to the broker; hello s: every hello applied (or --hello-wait-s passed); pending:"
            " hellos not applied when the window began."
        )
        print(
            "inbound depth in the window: "
            + ", ".join(f"{r['size']:,}: {r['inbound_window']:,.0f}" for r in rows)
            + "; paho's queued outgoing packets at most: "
            + ", ".join(f"{r['size']:,}: {r['paho_out_max']:,.0f}" for r in rows)
        )
    for drain in drains:
        print(
            f"backlog drain: {drain['heartbeats']:,} QoS 1 heartbeats for {args.agents:,} ids queued while the bridge "
            f"was down: {drain['heartbeats_per_s']:,.0f} hb/s, bridge RSS max {drain['rss_mb']:.1f} MB during the drain"
        )
    lost += sum(int(args.agents - d["touched"]) for d in drains)
    print(f"lost: {lost}, doubled: 0 (lost = agents whose last_seen_at did not move; no tasks run here)")
    if lost:
        sys.exit(1)
