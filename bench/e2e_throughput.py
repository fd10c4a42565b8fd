"""End to end on PostgreSQL + Mosquitto: enqueue → dispatcher → outbox → MQTT → agent → result → PostgreSQL.

    .venv/bin/python bench/e2e_throughput.py [--agents 20] [--tasks 5000] [--latency 200] [--runs 3] [--quick]
        [--no-peer] [--broker private|system]

Separate processes, as in production: ``manage.py run_dispatcher``, ``manage.py
run_bridge`` and ``python -m aegis_agent.simulate`` (N agents, no-op tasks of 0 ms),
on a scratch database ``<name>_bench_e2e`` (from ``DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/aegis``; created, migrated, dropped here)
and a private Mosquitto on a free port (``set_tcp_nodelay true``, deep queues;
``--broker system`` uses the one on 127.0.0.1:1883 instead). Synchronous commit on.

- Throughput: one ``any`` job of K ``noop`` tasks for the simulated agents;
  tasks/s from the submit transaction's commit to the job's ``finished_at``
  (all K tasks succeeded in PostgreSQL).
- Latency: with the system idle, single-task jobs pinned to a probe agent run one
  at a time. The probe is a paho MQTT 5 client in this process (TCP_NODELAY) that
  stamps the arrival of ``task.assign`` and answers accepted + succeeded at once;
  "dispatch" is commit → assignment received, "completion" is commit → the job's
  counter says succeeded (polled every 0.5 ms).
- The peer: ``bench/peer_celery.py`` (Celery + Redis, prefork 2, acks_late) runs
  after our processes stopped, and the table shows both with ratios.

Figures are medians over ``--runs``; percentiles are nearest-rank per run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    drop_database,
    median,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)

PROBE_ID = "bench-probe"
TARGETS = {"tasks_per_s": 1800.0, "dispatch_p50_ms": 2.5, "dispatch_p99_ms": 10.0}


class ProbeAgent:
    """A protocol-v1 agent that records when each assignment arrives and finishes it at once."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        from aegis_agent import connection, wire

        self.wire = wire
        self.received: dict[int, float] = {}  # job id -> perf_counter at arrival
        self.answered: dict[int, float] = {}  # job id -> perf_counter once both events were handed to paho
        self.arrived = threading.Condition()
        self.client = connection.new_client(PROBE_ID, 5)
        self.client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.topics = wire.Topics(PROBE_ID)
        self.connected = threading.Event()
        self.client.connect("127.0.0.1", port, keepalive=60, clean_start=True)
        self.mqtt = mqtt
        self.client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        wire = self.wire
        client.subscribe([(self.topics.inbox, 1)])
        client.publish(self.topics.status, wire.encode(wire.status("online")), qos=1, retain=True)
        hello = wire.hello("bench", ["noop"], {"role": "probe"}, 1000, [])
        client.publish(self.topics.hello, wire.encode(hello), qos=1)
        self.connected.set()

    def _on_message(self, client: Any, _userdata: Any, message: Any) -> None:
        arrived = time.perf_counter()
        wire = self.wire
        parsed = wire.parse_inbox(message.payload)
        if not isinstance(parsed, wire.Assign):
            return
        task = parsed.task
        client.publish(self.topics.events, wire.encode(wire.task_accepted(task.id, task.attempt)), qos=1)
        client.publish(self.topics.events, wire.encode(wire.task_succeeded(task.id, task.attempt, {})), qos=1)
        answered = time.perf_counter()
        with self.arrived:
            self.received[int(task.job_id)] = arrived
            self.answered[int(task.job_id)] = answered
            self.arrived.notify_all()

    def close(self) -> None:
        wire = self.wire
        info = self.client.publish(self.topics.status, wire.encode(wire.status("offline")), qos=1, retain=True)
        info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


def _submit(spec: Any) -> tuple[int, float, float]:
    """Submit a job; returns its id and the commit instant (perf_counter, wall clock)."""
    from django.db import transaction

    from aegis_site.core.audit import Actor
    from tasks import actions

    committed: list[tuple[float, float]] = []
    with transaction.atomic():
        # Registered before the submit's own NOTIFY callback, so it runs right after COMMIT returns.
        transaction.on_commit(lambda: committed.append((time.perf_counter(), time.time())))
        job, _ = actions.submit_job(spec, Actor.system("bench"))
    return job.pk, *committed[0]


def _throughput_run(count: int) -> float:
    from tasks.engine.submit import JobSpec
    from tasks.models import Job

    spec = JobSpec(kind="noop", mode="any", task_count=count, target_labels={"simulated": "true"})
    job_id, _, committed_wall = _submit(spec)
    deadline = time.monotonic() + max(120.0, count / 50)
    while True:
        job = Job.objects.only("tasks_succeeded", "tasks_failed", "tasks_canceled", "finished_at").get(pk=job_id)
        if job.tasks_finished >= count and job.finished_at is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {job.tasks_finished} of {count} finished before the deadline")
        time.sleep(0.01)
    if job.tasks_succeeded != count:
        raise RuntimeError(f"job {job_id}: {job.tasks_succeeded} succeeded, {job.tasks_failed} failed")
    return count / (job.finished_at.timestamp() - committed_wall)


def _latency_run(probe: ProbeAgent, samples: int, pause_s: float) -> tuple[list[float], list[float], list[float]]:
    """Per sample: dispatch (commit → the agent has it), completion (commit → result committed), and the report
    part of completion (the agent's answer handed to paho → result committed)."""
    from django.db import connection

    from tasks.engine.submit import JobSpec

    dispatch, completion, report = [], [], []
    for _ in range(samples):
        time.sleep(pause_s)  # let every process go back to waiting
        job_id, committed, _ = _submit(JobSpec(kind="noop", mode="each", target_agent_ids=[PROBE_ID]))
        # Wait for the assignment without touching the database: a polling loop here
        # would compete for the two cores with the dispatcher it is timing.
        with probe.arrived:
            probe.arrived.wait_for(lambda: job_id in probe.received, timeout=10)  # noqa: B023 (used at once)
            arrived = probe.received.pop(job_id)
            answered = probe.answered.pop(job_id)
        with connection.cursor() as cursor:
            deadline = time.monotonic() + 10
            while True:
                cursor.execute("SELECT tasks_succeeded FROM jobs WHERE id = %s", [job_id])
                if cursor.fetchone()[0] == 1:
                    done = time.perf_counter()
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"single-task job {job_id} did not complete within 10 s")
                time.sleep(0.0005)
        dispatch.append((arrived - committed) * 1000)
        completion.append((done - committed) * 1000)
        report.append((done - answered) * 1000)
    return dispatch, completion, report


def _online(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    database_url = scratch_database_url("bench_e2e")
    probe: ProbeAgent | None = None
    failed = True
    try:
        setup_django(database_url)
        from django.db import connection

        with connection.cursor() as cursor:
            if args.synchronous_commit_off:  # before any role connects: every session of the database takes it
                cursor.execute(f'ALTER DATABASE "{connection.settings_dict["NAME"]}" SET synchronous_commit = off')
                cursor.execute("SET synchronous_commit = off")
            cursor.execute("SHOW synchronous_commit")
            sync = cursor.fetchone()[0]
        port = procs.mosquitto() if args.broker == "private" else 1883
        tag = f"bench-{os.getpid()}"
        env = role_env(
            database_url,
            port,
            tag,
            BRIDGE_OUTBOX_POLL_INTERVAL="0.05",
            AGENT_HEARTBEAT_INTERVAL="600",  # the probe sends no heartbeats
            LOG_LEVEL="WARNING",
        )
        # The bridge logs at INFO so we see it subscribed: agents that connect before its first
        # subscription are never learned (their hello has no subscriber, and a shared subscription
        # gets no retained status).
        bridge = procs.django_command("bridge", ["run_bridge"], {**env, "LOG_LEVEL": "INFO"})
        dispatcher = procs.django_command("dispatcher", ["run_dispatcher"], env)
        procs.wait_log("bridge", "bridge connected")
        time.sleep(0.5)  # the SUBACK follows the log line
        probe = ProbeAgent(port)
        wait_until(lambda: _online(PROBE_ID) == 1, 30, "the probe agent online in the database")
        prefix = f"e2e{os.getpid()}-"
        simulator = procs.start(
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
                "0",
                "--max-concurrency",
                str(args.max_concurrency),
                "--stats-every-s",
                "0",
                "--log-level",
                "WARNING",
            ],
        )

        def all_online() -> bool:
            procs.check_alive()
            return _online(prefix) == args.agents

        wait_until(all_online, 30 + args.agents / 50, f"{args.agents} simulated agents online in the database")
        print(
            f"synchronous_commit={sync}, broker={args.broker} (127.0.0.1:{port}), agents={args.agents} "
            f"x max_concurrency {args.max_concurrency}, tasks/run={args.tasks}, latency samples/run={args.latency}, "
            f"runs={args.runs}",
            flush=True,
        )
        _throughput_run(min(args.tasks, 500))  # warm-up: connections, plans, caches
        rates: list[float] = []
        cpu: dict[str, list[float]] = {"bridge": [], "dispatcher": [], "simulator": []}
        pids = {"bridge": bridge.pid, "dispatcher": dispatcher.pid, "simulator": simulator.pid}
        for _ in range(args.runs):
            before = {name: _cpu(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            rates.append(_throughput_run(args.tasks))
            wall = time.perf_counter() - started
            for name, pid in pids.items():
                cpu[name].append((_cpu(pid) - before[name]) / wall * 100)
        _latency_run(probe, 20, args.pause_s)  # warm-up
        runs = [_latency_run(probe, args.latency, args.pause_s) for _ in range(args.runs)]
        procs.check_alive()
        failed = False
        return {
            "tasks_per_s": median(rates),
            "rates": rates,
            "cpu": {name: median(values) for name, values in cpu.items()},
            **{f"dispatch_p{p}_ms": median([percentile(d, p) for d, _, _ in runs]) for p in (50, 95, 99)},
            **{f"completion_p{p}_ms": median([percentile(c, p) for _, c, _ in runs]) for p in (50, 95, 99)},
            **{f"report_p{p}_ms": median([percentile(r, p) for _, _, r in runs]) for p in (50, 99)},
        }
    finally:
        if probe is not None:
            probe.close()
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=20, help="simulated agents (one process)")
    parser.add_argument("--max-concurrency", type=int, default=50, help="tasks each simulated agent may hold")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency", type=int, default=200, help="sequential single tasks per latency run")
    parser.add_argument("--pause-s", type=float, default=0.02, help="idle time before each latency sample")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--broker", choices=("private", "system"), default="private")
    parser.add_argument("--no-peer", action="store_true", help="skip the Celery peer (bench/peer_celery.py)")
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 100 latency samples, 2 runs")
    parser.add_argument(
        "--synchronous-commit-off",
        action="store_true",
        help="diagnostic only: what the WAL flushes cost (never run so: a crash loses acknowledged results)",
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.latency, args.runs = 2000, 100, 2

    ours = run(args)
    peer: dict[str, Any] | None = None
    if not args.no_peer:
        from bench import peer_celery

        if peer_celery.Celery is None:
            print(peer_celery.MISSING.splitlines()[0] + " (pip install -r requirements-bench.txt); no peer figures")
        else:
            peer = peer_celery.run_peer(args.tasks, args.latency, args.runs)

    print()
    print(f"{'metric':<40}{'Aegis':>10}{'Celery':>10}{'Aegis/Celery':>14}{'target':>10}")
    rows = [
        ("throughput, tasks/s (higher is better)", "tasks_per_s", "tasks_per_s", ">= 1,800"),
        ("dispatch p50, ms (commit→agent has it)", "dispatch_p50_ms", None, "<= 2.5"),
        ("dispatch p95, ms", "dispatch_p95_ms", None, ""),
        ("dispatch p99, ms", "dispatch_p99_ms", None, "<= 10"),
        ("completion p50, ms (commit→succeeded)", "completion_p50_ms", "p50_ms", ""),
        ("completion p95, ms", "completion_p95_ms", "p95_ms", ""),
        ("completion p99, ms", "completion_p99_ms", "p99_ms", ""),
        ("  of it: report p50, ms (answer→committed)", "report_p50_ms", None, ""),
        ("  of it: report p99, ms", "report_p99_ms", None, ""),
    ]
    for label, ours_key, peer_key, target in rows:
        value = ours[ours_key]
        fmt = "{:>10,.0f}" if ours_key == "tasks_per_s" else "{:>10.2f}"
        peer_value = peer[peer_key] if peer is not None and peer_key else None
        peer_text = fmt.format(peer_value) if peer_value is not None else f"{'-':>10}"
        ratio = f"{value / peer_value:>14.2f}" if peer_value else f"{'-':>14}"
        print(f"{label:<40}{fmt.format(value)}{peer_text}{ratio}{target:>10}")
    print(f"throughput per run, tasks/s: {', '.join(f'{r:,.0f}' for r in ours['rates'])}")
    cpu = ", ".join(f"{name} {percent:.0f}" for name, percent in ours["cpu"].items())
    print(f"CPU during throughput runs (% of one core, median): {cpu}")
    if peer is not None:
        print("Celery latency is apply_async → result ready in the client (no separate dispatch point).")


if __name__ == "__main__":
    main()
