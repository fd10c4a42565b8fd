"""HTTP agents at scale (issue 19, item 2): many agents long-polling one web process, then two.

    .venv/bin/python bench/http_agents.py [--agents 1000] [--webs 1,2] [--tasks 500] [--samples 10]
        [--requests 20] [--runs 3] [--quick]

Separate processes with the production defaults (the PostgreSQL pool on, ``DEBUG`` off):
daphne as the image runs it (``daphne -v 0 ... aegis_site.asgi:application``), each with its
own ``PGAPPNAME`` so that ``pg_stat_activity`` names its connections, and ``manage.py
run_dispatcher``, on a scratch database ``<name>_http_bench`` (from ``DATABASE_URL``; created,
migrated, dropped here) and a private Mosquitto (the dispatcher's). Settings that differ, and
why: ``ALLOWED_HOSTS`` and ``HTTPS_ONLY=0`` (plain HTTP on 127.0.0.1; TLS would be nginx's),
``API_THROTTLE_ENROL``/``API_THROTTLE_ANON``/``API_THROTTLE_OPERATOR`` raised (every agent
enrols from the one address 127.0.0.1, and the operator probes would pass 600/min).

The agents are coroutines of this process (``httpx.AsyncClient``, one event loop) that
follow the documented HTTP flow (docs/api.md): ``POST agent/enrol/`` with a bootstrap token,
``agent/heartbeat/``, then ``agent/tasks/claim/`` with ``wait_s`` 30, and for each task
``accepted`` then ``succeeded`` on ``agent/tasks/{id}/events/``. With two web processes each
agent polls the one its index picks (agent i: web i mod 2): round robin without a proxy.
This process submits the jobs itself (``tasks.actions.submit_job``, in one thread of its own).

For each number of web processes:

1. Operator API baseline: ``--requests`` each of ``GET /api/v1/jobs/`` and ``GET /api/v1/agents/``
   (an operator token), one at a time, with no agent polling: p50/p99.
2. The fleet starts; once every agent's claim is sent and the web processes are quiet (their
   CPU under 5 % over half a second), with every agent waiting: each web's RSS and threads,
   and the database connections of the web processes (open, and not idle) in ``pg_stat_activity``.
3. The operator API again, with the agents waiting: p50/p99 and the ratio to 1.
4. Claim latency, idle fleet: ``--samples`` single-task jobs, each pinned to one waiting agent,
   one after the other; from the submit's COMMIT to that agent's claim answer; p50/p99.
5. Claims/s: one job of ``--tasks`` noop tasks for any agent (``mode=any``); from its COMMIT until
   the last task is reported succeeded; tasks/s, and claims/s over the same span.

Every task of every job must be claimed once and succeed once: the script prints
"lost: N, doubled: N" (tasks not succeeded at the end; tasks handed out more than once) and
exits 1 if either is not zero. ``--runs`` repeats everything and prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    drop_database,
    free_port,
    median,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_port,
)

API = "/api/v1"
WAIT_S = 30.0  # API_CLAIM_MAX_WAIT, the longest long poll
DAPHNE = str(Path(PYTHON).parent / "daphne")
APP_PREFIX = "aegis-bench-web-"
QUIET_CPU_PERCENT = 5.0
RAMP_STEP, RAMP_PAUSE_S = 100, 0.2  # the fleet starts 100 agents at a time


@dataclass
class Fleet:
    """What the agents saw: claims per task, claim times per job, reports that succeeded."""

    claims: Counter[int] = field(default_factory=Counter)  # task id -> times handed out
    completions: Counter[int] = field(default_factory=Counter)  # task id -> "succeeded" answered "applied"
    claimed_at: dict[int, float] = field(default_factory=dict)  # job id -> first claim answer (perf_counter)
    succeeded: Counter[int] = field(default_factory=Counter)  # job id -> tasks reported succeeded (applied)
    last_success_at: dict[int, float] = field(default_factory=dict)  # job id -> perf_counter
    last_claim_at: dict[int, float] = field(default_factory=dict)
    event_ms: list[float] = field(default_factory=list)  # each event POST, answered 200
    polling: set[int] = field(default_factory=set)  # agents whose claim is sent and not answered
    errors: Counter[str] = field(default_factory=Counter)
    stop: bool = False


@dataclass
class Figures:
    webs: int
    operator_idle: dict[str, float]
    operator_busy: dict[str, float]
    rss_idle_mb: list[float]
    threads_idle: list[int]
    rss_mb: list[float]
    threads: list[int]
    connections_open: int
    connections_busy: int
    latency_ms: dict[str, float]
    tasks_per_s: float
    claims_per_s: float
    event_ms: dict[str, float]
    generator_cpu_percent: float


# --- this process's Django side (one thread: Django connections are per thread) -------------------------------


def _commit_of_submit(spec: Any) -> tuple[int, float]:
    """Submit a job; returns its id and the instant (perf_counter) its COMMIT returned."""
    from django.db import transaction

    from aegis_site.core.audit import Actor
    from tasks import actions

    committed: list[float] = []
    with transaction.atomic():
        # Registered before the submit's own NOTIFY callback, so it runs right after COMMIT returns.
        transaction.on_commit(lambda: committed.append(time.perf_counter()))
        job, _ = actions.submit_job(spec, Actor.system("bench"))
    return job.pk, committed[0]


def _pinned_job(agent_id: str) -> tuple[int, float]:
    from tasks.engine.submit import JobSpec

    return _commit_of_submit(JobSpec(kind="noop", target_agent_ids=[agent_id], allow_no_agents=True))


def _job_for_any(count: int) -> tuple[int, float]:
    from tasks.engine.submit import JobSpec

    spec = JobSpec(kind="noop", mode="any", task_count=count, target_capabilities=["noop"], allow_no_agents=True)
    return _commit_of_submit(spec)


def _tokens(agents: int) -> tuple[str, str]:
    """An enrolment token for ``agents`` enrolments and an operator's API token."""
    from django.contrib.auth import get_user_model

    from aegis_site.core.audit import Actor
    from ops import actions as ops_actions
    from registry import actions as registry_actions

    _, enrolment = registry_actions.create_enrolment_token(
        Actor.system("bench"), name="bench", allowed_capabilities=["noop"], uses=agents
    )
    user = get_user_model().objects.create_superuser("bench-operator", "bench@example.invalid", None)
    _, operator = ops_actions.issue_api_token(user, "bench", Actor.system("bench"))
    return enrolment, operator


def _connections() -> tuple[int, int]:
    """The web processes' connections in ``pg_stat_activity``: open, and not idle (in use)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity"
            " WHERE application_name LIKE %s",
            [APP_PREFIX + "%"],
        )
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _outcome() -> tuple[int, int]:
    """Tasks of the bench's jobs: all of them, and those succeeded."""
    from tasks.models import Task, TaskState

    return Task.objects.count(), Task.objects.filter(state=TaskState.SUCCEEDED).count()


# --- the web processes ------------------------------------------------------------------------------------------


def web_env(url: str, mqtt_port: int, data_dir: Path, number: int) -> dict[str, str]:
    return role_env(
        url,
        mqtt_port,
        "httpbench",
        PGAPPNAME=f"{APP_PREFIX}{number}",
        DATA_DIR=str(data_dir),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HTTPS_ONLY="0",  # plain HTTP on loopback: TLS is the proxy's
        API_THROTTLE_ENROL="1000000/min",  # every agent enrols from 127.0.0.1
        API_THROTTLE_ANON="1000000/min",
        API_THROTTLE_OPERATOR="1000000/min",  # the operator probes
        LOG_LEVEL="WARNING",
    )


def start_webs(procs: Processes, count: int, url: str, mqtt_port: int) -> tuple[list[str], list[psutil.Process]]:
    bases, processes = [], []
    for number in range(count):
        port = free_port()
        argv = [DAPHNE, "-v", "0", "-b", "127.0.0.1", "-p", str(port), "aegis_site.asgi:application"]
        proc = procs.start(f"web{number}", argv, web_env(url, mqtt_port, procs.tmp, number))
        wait_port(port, 60)
        bases.append(f"http://127.0.0.1:{port}")
        processes.append(psutil.Process(proc.pid))
    return bases, processes


def stop_webs(procs: Processes) -> None:
    for name, proc in list(procs.children):
        if name.startswith("web"):
            procs.stop(proc)


# --- the agents -------------------------------------------------------------------------------------------------


async def enrol(bases: list[str], agents: int, enrolment: str) -> list[tuple[str, str]]:
    """Each agent enrols and heartbeats (docs/api.md, "An agent, with curl"); returns (agent id, token)."""
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(50)

        async def one(number: int) -> tuple[str, str]:
            agent_id = f"http-{number:05d}"
            base = bases[number % len(bases)]
            async with gate:
                body = {"enrolment_token": enrolment, "agent_id": agent_id, "capabilities": ["noop"]}
                answer = await client.post(f"{base}{API}/agent/enrol/", json=body)
                answer.raise_for_status()
                token = answer.json()["token"]
                beat = await client.post(f"{base}{API}/agent/heartbeat/", json={}, headers=_bearer(token))
                beat.raise_for_status()
            return agent_id, token

        return list(await asyncio.gather(*(one(number) for number in range(agents))))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def agent(client: httpx.AsyncClient, base: str, number: int, token: str, fleet: Fleet) -> None:
    headers = _bearer(token)
    while not fleet.stop:
        fleet.polling.add(number)
        try:
            answer = await client.post(
                f"{base}{API}/agent/tasks/claim/", json={"max_tasks": 1, "wait_s": WAIT_S}, headers=headers
            )
        except httpx.HTTPError as error:
            fleet.errors[type(error).__name__] += 1
            await asyncio.sleep(1)
            continue
        finally:
            fleet.polling.discard(number)
        if answer.status_code != 200:
            fleet.errors[f"claim {answer.status_code}"] += 1
            await asyncio.sleep(1)
            continue
        now = time.perf_counter()
        for task in answer.json()["tasks"]:
            fleet.claims[task["id"]] += 1
            fleet.claimed_at.setdefault(task["job_id"], now)
            fleet.last_claim_at[task["job_id"]] = now
            await report(client, base, headers, task, fleet)


async def report(
    client: httpx.AsyncClient, base: str, headers: dict[str, str], task: dict[str, Any], fleet: Fleet
) -> None:
    events = f"{base}{API}/agent/tasks/{task['id']}/events/"
    stem = f"{task['id']}-{task['attempt']}"
    for kind, extra in (("accepted", {}), ("succeeded", {"result": {"ok": True}})):
        body = {"type": kind, "attempt": task["attempt"], "event_id": f"{stem}-{kind[:4]}", **extra}
        for _try in range(5):
            started = time.perf_counter()
            try:
                answer = await client.post(events, json=body, headers=headers)
            except httpx.HTTPError as error:
                fleet.errors[f"event {type(error).__name__}"] += 1
                continue
            if answer.status_code == 200:
                fleet.event_ms.append((time.perf_counter() - started) * 1000)
                if kind == "succeeded" and answer.json().get("status") == "applied":
                    fleet.completions[task["id"]] += 1
                break
            fleet.errors[f"event {answer.status_code}"] += 1
            await asyncio.sleep(0.2)
    fleet.succeeded[task["job_id"]] += 1
    fleet.last_success_at[task["job_id"]] = time.perf_counter()


# --- one measurement --------------------------------------------------------------------------------------------


async def operator_latency(bases: list[str], token: str, requests: int) -> dict[str, float]:
    """``requests`` each of the jobs and agents lists, one at a time, round robin over the webs; p50/p99 ms."""
    timings: list[float] = []
    errors: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=60) as client:
        for number in range(requests * 2):
            base = bases[number % len(bases)]
            path = f"{API}/jobs/" if number % 2 == 0 else f"{API}/agents/"
            started = time.perf_counter()
            try:
                answer = await client.get(base + path, headers=_bearer(token))
            except httpx.HTTPError as error:
                errors[type(error).__name__] += 1
                continue
            timings.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                errors[str(answer.status_code)] += 1
    if errors:
        print(f"  operator requests that failed: {dict(errors)}")
    return {"p50": percentile(timings, 50), "p99": percentile(timings, 99)}


def established(processes: list[psutil.Process]) -> list[int]:
    """Each web's accepted client connections (its listening port's ESTABLISHED ones)."""
    counts = []
    for process in processes:
        sockets = process.net_connections(kind="tcp")
        ports = {c.laddr.port for c in sockets if c.status == psutil.CONN_LISTEN}
        counts.append(sum(1 for c in sockets if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in ports))
    return counts


async def wait_quiet(processes: list[psutil.Process], deadline_s: float) -> None:
    """Until every web process used under ``QUIET_CPU_PERCENT`` of a core over half a second."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        before = [p.cpu_times() for p in processes]
        await asyncio.sleep(0.5)
        after = [p.cpu_times() for p in processes]
        busiest = max((a.user + a.system - b.user - b.system) / 0.5 * 100 for a, b in zip(after, before, strict=True))
        if busiest < QUIET_CPU_PERCENT:
            return
    raise TimeoutError(f"the web processes were not quiet after {deadline_s:.0f}s")


async def wait_for(predicate: Any, what: str, deadline_s: float, fleet: Fleet, interval_s: float = 0.01) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:.0f}s waiting for {what} (errors: {dict(fleet.errors)})")
        await asyncio.sleep(interval_s)


async def measure(
    bases: list[str],
    processes: list[psutil.Process],
    agents: list[tuple[str, str]],
    args: argparse.Namespace,
    operator: str,
    django: ThreadPoolExecutor,
) -> Figures:
    loop = asyncio.get_running_loop()
    operator_idle = await operator_latency(bases, operator, args.requests)
    rss_idle_mb = [p.memory_info().rss / 2**20 for p in processes]
    threads_idle = [p.num_threads() for p in processes]

    fleet = Fleet()
    limits = httpx.Limits(max_connections=len(agents) + 100, max_keepalive_connections=len(agents) + 100)
    client = httpx.AsyncClient(timeout=httpx.Timeout(WAIT_S + 60), limits=limits)
    runners: list[asyncio.Task[None]] = []
    try:
        for number, (_, token) in enumerate(agents):  # 100 at a time: the listen backlog of daphne is 50
            runners.append(asyncio.create_task(agent(client, bases[number % len(bases)], number, token, fleet)))
            if number % RAMP_STEP == RAMP_STEP - 1:
                await asyncio.sleep(RAMP_PAUSE_S)
        await wait_for(lambda: len(fleet.polling) == len(agents), "every agent's claim to be sent", 120, fleet)
        expected = [len(range(number, len(agents), len(bases))) for number in range(len(bases))]
        await wait_for(
            lambda: all(n >= e for n, e in zip(established(processes), expected, strict=True)),
            "every agent's connection to be accepted",
            120,
            fleet,
            interval_s=0.5,
        )
        await wait_quiet(processes, 120)
        rss_mb = [p.memory_info().rss / 2**20 for p in processes]
        threads = [p.num_threads() for p in processes]
        connections_open, connections_busy = await loop.run_in_executor(django, _connections)
        operator_busy = await operator_latency(bases, operator, args.requests)

        latencies: list[float] = []
        for sample in range(args.samples):
            agent_id = agents[(sample * 37) % len(agents)][0]
            await wait_for(lambda: len(fleet.polling) == len(agents), "every agent to wait again", 60, fleet)
            job_id, committed = await loop.run_in_executor(django, _pinned_job, agent_id)
            await wait_for(lambda: fleet.succeeded[job_id] == 1, f"the pinned job {job_id}", 60, fleet)  # noqa: B023
            latencies.append((fleet.claimed_at[job_id] - committed) * 1000)

        await wait_for(lambda: len(fleet.polling) == len(agents), "every agent to wait again", 60, fleet)
        cpu_before = psutil.Process().cpu_times()
        job_id, committed = await loop.run_in_executor(django, _job_for_any, args.tasks)
        await wait_for(lambda: fleet.succeeded[job_id] >= args.tasks, "the job for any agent", 600, fleet)
        elapsed = fleet.last_success_at[job_id] - committed
        cpu_after = psutil.Process().cpu_times()
        claims_span = fleet.last_claim_at[job_id] - committed
        generator_cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / elapsed * 100
    finally:
        fleet.stop = True
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await client.aclose()
    doubled = sum(1 for count in fleet.completions.values() if count > 1)
    redelivered = sum(1 for count in fleet.claims.values() if count > 1)
    if doubled or redelivered:
        print(f"  completed twice in this run: {doubled}; handed out again (lease ran out): {redelivered}")
    if fleet.errors:
        print(f"  errors seen by the agents: {dict(fleet.errors)}")
    DOUBLED["tasks"] += doubled
    return Figures(
        webs=len(bases),
        operator_idle=operator_idle,
        operator_busy=operator_busy,
        rss_idle_mb=rss_idle_mb,
        threads_idle=threads_idle,
        rss_mb=rss_mb,
        threads=threads,
        connections_open=connections_open,
        connections_busy=connections_busy,
        latency_ms={"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
        tasks_per_s=args.tasks / elapsed,
        claims_per_s=args.tasks / claims_span,
        event_ms={"p50": percentile(fleet.event_ms, 50), "p99": percentile(fleet.event_ms, 99)},
        generator_cpu_percent=generator_cpu,
    )


DOUBLED: Counter[str] = Counter()  # tasks completed twice, over every run


def show(figures: Figures, agents: int) -> None:
    ratio = figures.operator_busy["p50"] / figures.operator_idle["p50"]
    print(
        f"  {figures.webs} web: claims {figures.claims_per_s:,.0f}/s, tasks done {figures.tasks_per_s:,.0f}/s"
        f" (load generator {figures.generator_cpu_percent:.0f}% of a core),"
        f" event POST p50 {figures.event_ms['p50']:.0f} / p99 {figures.event_ms['p99']:.0f} ms;"
        f" claim latency p50 {figures.latency_ms['p50']:.1f} ms / p99 {figures.latency_ms['p99']:.1f} ms\n"
        f"    {agents} waiting: RSS {' + '.join(f'{mb:.0f}' for mb in figures.rss_mb)} MB"
        f" (idle {' + '.join(f'{mb:.0f}' for mb in figures.rss_idle_mb)}),"
        f" threads {' + '.join(str(t) for t in figures.threads)}"
        f" (idle {' + '.join(str(t) for t in figures.threads_idle)}),"
        f" database connections {figures.connections_open} open / {figures.connections_busy} in use\n"
        f"    operator API p50/p99: idle {figures.operator_idle['p50']:.1f}/{figures.operator_idle['p99']:.1f} ms,"
        f" while they wait {figures.operator_busy['p50']:.1f}/{figures.operator_busy['p99']:.1f} ms"
        f" ({ratio:.2f}x the idle p50)"
    )


def summary(runs: list[Figures], agents: int) -> None:
    def med(values: list[float]) -> float:
        return median(values)

    first = runs[0]
    print(
        f"{first.webs} web ({len(runs)} runs, medians): claims {med([r.claims_per_s for r in runs]):,.0f}/s,"
        f" tasks done {med([r.tasks_per_s for r in runs]):,.0f}/s"
        f" (event POST p50 {med([r.event_ms['p50'] for r in runs]):.0f} ms),"
        f" claim latency p50 {med([r.latency_ms['p50'] for r in runs]):.1f} ms"
        f" / p99 {med([r.latency_ms['p99'] for r in runs]):.1f} ms,"
        f" RSS {med([sum(r.rss_mb) for r in runs]):.0f} MB (idle {med([sum(r.rss_idle_mb) for r in runs]):.0f}),"
        f" threads {med([sum(r.threads) for r in runs]):.0f} (idle {med([sum(r.threads_idle) for r in runs]):.0f}),"
        f" DB connections {med([r.connections_open for r in runs]):.0f} open"
        f" / {med([r.connections_busy for r in runs]):.0f} in use with {agents} waiting;"
        f" operator p50 {med([r.operator_idle['p50'] for r in runs]):.1f} ->"
        f" {med([r.operator_busy['p50'] for r in runs]):.1f} ms,"
        f" p99 {med([r.operator_idle['p99'] for r in runs]):.1f} ->"
        f" {med([r.operator_busy['p99'] for r in runs]):.1f} ms"
        f" ({med([r.operator_busy['p50'] / r.operator_idle['p50'] for r in runs]):.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--webs", default="1,2", help="numbers of web processes, in order")
    parser.add_argument("--tasks", type=int, default=500, help="noop tasks of the job for any agent")
    parser.add_argument("--samples", type=int, default=10, help="pinned single-task jobs for the claim latency")
    parser.add_argument("--requests", type=int, default=20, help="operator requests of each kind per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 agents, 100 tasks, 5 samples, 1 run: under a minute")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.tasks, args.samples, args.requests, args.runs = 100, 100, 5, 10, 1
    webs = [int(count) for count in args.webs.split(",")]

    started = time.time()
    url = scratch_database_url("http_bench")
    setup_django(url)
    procs = Processes()
    django = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django")
    failed = True
    try:
        mqtt_port = procs.mosquitto()
        procs.django_command("dispatcher", ["run_dispatcher"], web_env(url, mqtt_port, procs.tmp, 99))
        enrolment, operator = django.submit(_tokens, args.agents).result()
        bases, _ = start_webs(procs, 1, url, mqtt_port)
        agents = asyncio.run(enrol(bases, args.agents, enrolment))
        stop_webs(procs)
        now = time.strftime("%H:%M", time.gmtime())
        print(f"{args.agents} HTTP agents enrolled; load {os.getloadavg()[0]:.2f}, {now} UTC")

        results: dict[int, list[Figures]] = defaultdict(list)
        for run in range(args.runs):
            for count in webs:
                bases, processes = start_webs(procs, count, url, mqtt_port)
                try:
                    print(f"run {run + 1}, {count} web process(es):")
                    figures = asyncio.run(measure(bases, processes, agents, args, operator, django))
                    show(figures, args.agents)
                    results[count].append(figures)
                finally:
                    stop_webs(procs)
                procs.check_alive()
        print()
        for count in webs:
            summary(results[count], args.agents)
        if len(webs) > 1:
            one, more = results[webs[0]], results[webs[-1]]
            ratio = median([r.claims_per_s for r in more]) / median([r.claims_per_s for r in one])
            print(f"claims/s with {webs[-1]} web processes: {ratio:.2f}x of {webs[0]}")
        total, succeeded = django.submit(_outcome).result()
        lost = total - succeeded
        doubled = DOUBLED["tasks"]
        print(f"lost: {lost}, doubled: {doubled}")
        print(f"load average {os.getloadavg()[0]:.2f}; {time.time() - started:.0f} s in all")
        failed = bool(lost or doubled)
        return 1 if failed else 0
    finally:
        django.submit(_close_connection).result()
        django.shutdown()
        procs.stop_all(failed)
        drop_database(url)


def _close_connection() -> None:
    from django.db import connection

    connection.close()


if __name__ == "__main__":
    sys.exit(main())
