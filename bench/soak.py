"""Soak: the whole stack under steady load for N minutes, with faults, agent kills and a record of every minute.

    .venv/bin/python bench/soak.py [--minutes 60] [--agents 1000] [--simulators 8] [--seed 1] [--jobs-per-s 2]
        [--csv /tmp/soak.csv] [--plot /tmp/soak.png] [--json /tmp/soak.json]

Everything is a separate process, with the production defaults (the PostgreSQL
pool on, ``DEBUG`` off): ``daphne`` (web), ``manage.py run_bridge``,
``manage.py run_dispatcher``, and ``--simulators`` processes of
``python -m aegis_agent.simulate`` sharing ``--agents`` agents (ids
``soak-<process>-<n>``; ``sleep`` tasks of 0.05-0.5 s, 2 % of them fail), on a
scratch database ``<name>_soak`` (from ``DATABASE_URL``) and a private plain
Mosquitto on a free port (persistence on, as the generated production
configuration has it; no TLS).

Jobs go in through the REST API (``POST /api/v1/jobs/`` with an operator token)
at a steady rate, each with an idempotency key that is sent again until the web
answers (a killed web, a terminated backend): half ``each`` (1-10 agents by id),
half ``any`` (5-30 tasks, by label); a third allow 3 attempts with a 0.5 s backoff.

Every 60-120 s (``--fault-min-s``/``--fault-max-s``; seeded, printed) one fault:
SIGKILL of the bridge, the dispatcher or the web (restarted at once, as a
supervisor would), a broker restart (SIGTERM, start again on the same port), or
``pg_terminate_backend`` of every backend the roles hold (each role names its
connections with ``PGAPPNAME``). A role that exits by itself
(``ROLE_MAX_FAILED_STEPS``) is restarted too, and counted. On its own clock, every
90-180 s (``--agent-kill-min-s``/``--agent-kill-max-s``), one simulator process is
SIGKILLed (its agents' Last Wills fire; the engine recovers what they held) and
started again 2-10 s later with the same agent ids (they resume their sessions and
say hello with nothing running).

Every minute a line on stdout and a row in the CSV (``--csv``; default in a new
temporary directory, printed): tasks submitted and finished, completion latency
(task ``created_at`` -> ``finished_at``) p50/p95, the RSS of every process (web,
bridge, dispatcher, each simulator, Mosquitto), the PostgreSQL connections per
role, the queue (tasks queued/assigned/running), the backlog (unsent outbox rows,
pending notification deliveries), rows and on-disk size of the growing tables,
agents online, the faults of the minute. At the end a PNG of it (``--plot``;
skipped, with a message, without matplotlib). Then submitting stops, the soak
waits (bounded) for every job to finish and checks: no task lost (every job has
the tasks it was submitted with, every task ended), none succeeded twice (one
``succeeded`` event per task at most, the job counters match the tasks), every
job finished, and no process's memory grows without bound (``RssTrack`` in
``bench/_soak_record.py``). It exits 1 and prints why when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    PYTHON,
    Processes,
    drop_database,
    free_port,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)
from bench._soak_procs import AGENT_PREFIX, Broker, Role, Simulators, Supervisor
from bench._soak_record import (
    APP_PREFIX,
    DRIVER_APP,
    HEADER,
    ROLES,
    CsvLog,
    Minute,
    RssTrack,
    backlog,
    finished_between,
    online_agents,
    plot,
    queue_depth,
    role_connections,
    summary_csv,
    table_sizes,
    terminate_role_backends,
)

DAPHNE = str(Path(PYTHON).parent / "daphne")
FAULTS = ("kill", "broker", "database")
RSS_SAMPLE_S = 10.0


# --- load ------------------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    job_id: int
    key: str
    expected_tasks: int
    mode: str


@dataclass
class Submitter:
    """POSTs jobs at a steady rate; a failed request is sent again with the same idempotency key."""

    base_url: str
    token: str
    agent_ids: list[str]
    jobs_per_s: float
    rng: random.Random
    jobs: list[Submitted] = field(default_factory=list)
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted_tasks: int = 0

    def spec(self, number: int) -> tuple[dict[str, Any], int]:
        rng = self.rng
        body: dict[str, Any] = {
            "kind": "sleep",
            "payload": {"seconds": round(rng.uniform(0.05, 0.5), 3)},
            "idempotency_key": f"soak-{number}",
            "execution_timeout_s": 60,
        }
        if rng.random() < 1 / 3:
            body.update(max_attempts=3, backoff_base_s=0.5, backoff_cap_s=2.0)
        else:
            body["max_attempts"] = 1
        if rng.random() < 0.5:
            targets = rng.sample(self.agent_ids, rng.randint(1, 10))
            body.update(mode="each", target_agent_ids=targets)
            return body, len(targets)
        count = rng.randint(5, 30)
        body.update(mode="any", task_count=count, target_labels={"simulated": "true"})
        return body, count

    def run(self) -> None:
        number = 0
        started = time.monotonic()
        while not self.stop.is_set():
            due = started + number / self.jobs_per_s
            if self.stop.wait(max(0.0, due - time.monotonic())):
                break
            body, expected = self.spec(number)
            job_id = self.post(body)
            if job_id is not None:
                with self.lock:
                    self.jobs.append(Submitted(job_id, body["idempotency_key"], expected, body["mode"]))
                    self.submitted_tasks += expected
            number += 1

    def post(self, body: dict[str, Any], deadline_s: float = 180.0) -> int | None:
        deadline = time.monotonic() + deadline_s
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        last = ""
        while time.monotonic() < deadline:
            call = urllib.request.Request(f"{self.base_url}/api/v1/jobs/", data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(call, timeout=15) as response:  # nosec B310 (loopback)
                    return int(json.loads(response.read())["id"])
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}: {error.read()[:300]!r}"
                if error.code < 500 and error.code != 429:
                    break  # the request itself is wrong: sending it again will not help
            except (OSError, ValueError) as error:
                last = repr(error)
            self.retries += 1
            time.sleep(0.5)
        self.failures.append(f"{body['idempotency_key']}: {last}")
        return None


# --- the run ---------------------------------------------------------------------------------------------------


def _roles(procs: Processes, database_url: str, port: int, data_dir: Path) -> dict[str, Role]:
    tag = f"soak{os.getpid()}"
    common = {
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "HTTPS_ONLY": "0",
        "DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",  # the production default (this process runs at WARNING); the bridge says it connected
        "TRANSITION_LOG_LEVEL": "WARNING",  # one log line per task transition would be gigabytes in an hour
    }
    (data_dir / "static").mkdir(exist_ok=True)  # whitenoise's STATIC_ROOT (nothing collected: the API needs none)
    web_port = free_port()
    argv = {
        "web": [DAPHNE, "-b", "127.0.0.1", "-p", str(web_port), "aegis_site.asgi:application"],
        "bridge": [PYTHON, "manage.py", "run_bridge"],
        "dispatcher": [PYTHON, "manage.py", "run_dispatcher"],
    }
    roles = {}
    for name in ROLES:
        env = role_env(database_url, port, tag, PGAPPNAME=APP_PREFIX + name, **common)
        roles[name] = Role(name, argv[name], env, procs.tmp / f"{name}.log")
    roles["web"].env["SOAK_WEB_PORT"] = str(web_port)
    return roles


def _token() -> str:
    from django.contrib.auth.models import User

    from aegis_site.core.audit import Actor
    from ops import actions as ops_actions

    user = User.objects.create_superuser("soak", password=None)
    _token, secret = ops_actions.issue_api_token(user, "soak", Actor.system("soak"))
    return secret


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:  # nosec B310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Run:
    args: argparse.Namespace
    database: str
    roles: dict[str, Role]
    broker: Broker
    supervisor: Supervisor
    submitter: Submitter
    simulators: Simulators
    csv: CsvLog
    minutes: list[Minute] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    warmup_rss: dict[str, float] = field(default_factory=dict)
    warmup_end: float = float("inf")
    rss: RssTrack = field(default_factory=RssTrack)

    def processes(self) -> list[Role | Broker]:
        return [*self.roles.values(), *self.simulators.roles, self.broker]

    def inject(self, rng: random.Random) -> str:
        kind = rng.choice(FAULTS)
        if kind == "kill":
            name = rng.choice(ROLES)
            self.supervisor.kill(name)
            what = f"kill {name}"
        elif kind == "broker":
            self.broker.restart()
            what = "broker restart"
        else:
            what = f"terminate {terminate_role_backends(self.database)} backends"
        self.faults.append((time.monotonic(), what))
        return what

    def kill_agents(self, rng: random.Random) -> str | None:
        up = self.simulators.up()
        if not up:
            return None
        index = rng.choice(up)
        down_s = rng.uniform(self.args.agent_down_min_s, self.args.agent_down_max_s)
        count = self.simulators.kill(index, down_s)
        what = f"kill agents sim{index} ({count}, {down_s:.0f} s down)"
        self.faults.append((time.monotonic(), what))
        return what

    def sample_rss(self) -> dict[str, float]:
        now = time.monotonic()
        values = {}
        for process in self.processes():
            pid = process.pid
            values[process.name] = process.rss_mb()
            self.rss.add(process.name, pid, now, values[process.name])
        return values

    def minute_row(self, minute: int, start: datetime, end: datetime, since: float, submitted: int) -> Minute:
        latencies = finished_between(start, end)
        now = time.monotonic()
        row = Minute(
            minute=minute,
            utc=end.strftime("%Y-%m-%d %H:%M:%S"),
            seconds=now - since,
            submitted=submitted,
            latencies=latencies,
            rss_mb=self.sample_rss(),
            connections=role_connections(self.database),
            queue=queue_depth(),
            backlog=backlog(),
            tables=table_sizes(),
            agents_online=online_agents(AGENT_PREFIX),
            faults=[what for at, what in self.faults if since <= at < now],
            restarts=[what for at, what in self.supervisor.events if since <= at < now],
        )
        self.minutes.append(row)
        self.csv.write(row.csv_row())
        print(row.line(), flush=True)
        return row

    def load_phase(self, rng: random.Random) -> None:
        thread = threading.Thread(target=self.submitter.run, name="submitter", daemon=True)
        started = time.monotonic()
        thread.start()
        agent_rng = random.Random(rng.random())  # nosec B311 (its own stream: the role faults stay as they were)
        next_fault = started + rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
        next_agent_kill = started + agent_rng.uniform(self.args.agent_kill_min_s, self.args.agent_kill_max_s)
        next_sample = started
        minute_start, minute_wall = started, datetime.now(UTC)
        submitted_before = 0
        minute = 1
        end = started + self.args.minutes * 60
        print(HEADER, end="", flush=True)
        self.minute_row(0, minute_wall, minute_wall, started, 0)  # the baseline: agents online, no load yet
        while True:
            time.sleep(0.25)
            self.supervisor.check()
            for name in self.simulators.due():
                print(f"  + {time.monotonic() - started:7.1f}s {name} started again", flush=True)
            self.simulators.check()
            now = time.monotonic()
            if now >= next_fault and now < end:
                what = self.inject(rng)
                print(f"  + {now - started:7.1f}s fault: {what}", flush=True)
                next_fault = now + rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
            if now >= next_agent_kill and now < end and self.args.agent_kill_max_s > 0:
                killed = self.kill_agents(agent_rng)
                if killed:
                    print(f"  + {now - started:7.1f}s fault: {killed}", flush=True)
                next_agent_kill = now + agent_rng.uniform(self.args.agent_kill_min_s, self.args.agent_kill_max_s)
            if now >= next_sample:
                self.sample_rss()
                next_sample = now + RSS_SAMPLE_S
            if now >= min(started + 60 * minute, end):
                wall = datetime.now(UTC)
                with self.submitter.lock:
                    submitted = self.submitter.submitted_tasks
                row = self.minute_row(minute, minute_wall, wall, minute_start, submitted - submitted_before)
                if minute == self.args.warmup_minutes:
                    self.warmup_rss, self.warmup_end = dict(row.rss_mb), time.monotonic()
                submitted_before = submitted
                minute_start, minute_wall = now, wall
                minute += 1
            if now >= end:
                break
        self.submitter.stop.set()
        self.simulators.due(float("inf"))  # every agent back for the drain
        thread.join(200)

    def drain(self) -> float:
        from tasks.models import Job

        ids = [job.job_id for job in self.submitter.jobs]
        started = time.monotonic()
        deadline = started + self.args.drain_timeout_s
        while time.monotonic() < deadline:
            self.supervisor.check()
            self.simulators.check()
            if not Job.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
                break
            time.sleep(1)
        return time.monotonic() - started


def verdict(run: Run, drained_s: float) -> tuple[list[str], list[str]]:
    """Every check that failed, as one line each (empty: the soak passed), and the memory report."""
    from django.db.models import Count

    from tasks.models import HELD_STATES, Job, Task, TaskEvent, TaskState

    problems: list[str] = [f"submission never accepted: {failure}" for failure in run.submitter.failures]
    by_id = {job.job_id: job for job in run.submitter.jobs}
    if len(by_id) != len(run.submitter.jobs):
        problems.append("two idempotency keys returned the same job")
    jobs = {job.pk: job for job in Job.objects.filter(pk__in=list(by_id))}
    tasks_of = dict(Task.objects.filter(job_id__in=list(by_id)).values_list("job_id").annotate(n=Count("id")))
    for job_id, submitted in by_id.items():
        job = jobs.get(job_id)
        if job is None:
            problems.append(f"job {job_id} ({submitted.key}) is gone")
            continue
        if job.tasks_total != submitted.expected_tasks or tasks_of.get(job_id, 0) != submitted.expected_tasks:
            problems.append(
                f"job {job_id}: submitted with {submitted.expected_tasks} tasks, "
                f"tasks_total {job.tasks_total}, {tasks_of.get(job_id, 0)} task rows"
            )
        if job.finished_at is None:
            problems.append(f"job {job_id} not finished after a {drained_s:.0f} s drain: state {job.state}")
    open_states = [TaskState.QUEUED, *HELD_STATES]
    unfinished = list(Task.objects.filter(job_id__in=list(by_id), state__in=open_states).values_list("pk", "state"))
    if unfinished:
        problems.append(f"{len(unfinished)} tasks never ended, e.g. {unfinished[:10]}")
    twice = list(
        TaskEvent.objects.filter(kind="succeeded", task__job_id__in=list(by_id))
        .values("task_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("task_id", "n")
    )
    if twice:
        problems.append(f"{len(twice)} tasks succeeded more than once (task id, times): {twice[:10]}")
    succeeded = dict(
        Task.objects.filter(job_id__in=list(by_id), state=TaskState.SUCCEEDED)
        .values_list("job_id")
        .annotate(n=Count("id"))
    )
    wrong = [job_id for job_id, job in jobs.items() if job.tasks_succeeded != succeeded.get(job_id, 0)]
    if wrong:
        problems.append(f"{len(wrong)} jobs whose succeeded counter differs from their tasks, e.g. {wrong[:10]}")
    lost = len(unfinished) + sum(1 for job_id in by_id if job_id not in jobs)
    print(f"lost: {lost}, doubled: {len(twice)}", flush=True)
    if not run.warmup_rss:
        problems.append("no RSS after the warm-up (the run was shorter than --warmup-minutes)")
    memory, report = run.rss.check(run.warmup_end, run.args.rss_tolerance, run.args.rss_ceiling)
    return problems + memory, report


def summary(run: Run, drained_s: float, problems: list[str], seed: int) -> dict[str, Any]:
    from django.db.models import Count

    from tasks.models import Task

    ids = [job.job_id for job in run.submitter.jobs]
    states = dict(Task.objects.filter(job_id__in=ids).values_list("state").annotate(n=Count("id")))
    return {
        "seed": seed,
        "minutes": run.args.minutes,
        "agents": run.args.agents,
        "simulators": run.args.simulators,
        "jobs": len(ids),
        "tasks": sum(job.expected_tasks for job in run.submitter.jobs),
        "task_states": states,
        "submit_retries": run.submitter.retries,
        "faults": [what for _at, what in run.faults],
        "kills": {name: role.kills for name, role in run.roles.items()},
        "agent_kills": run.simulators.kills,
        "exits": {name: role.exits for name, role in run.roles.items()},
        "broker_restarts": run.broker.restarts,
        "drain_s": round(drained_s, 1),
        "warmup_rss_mb": run.warmup_rss,
        "end_rss_mb": {process.name: process.rss_mb() for process in run.processes()},
        "per_minute": [minute.csv_row() for minute in run.minutes],
        "problems": problems,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long jobs are submitted")
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents, over --simulators processes")
    parser.add_argument("--simulators", type=int, default=8, help="simulator processes (the unit of an agent kill)")
    parser.add_argument("--seed", type=int, help="faults, job mix and task failures (default: random, printed)")
    parser.add_argument("--jobs-per-s", type=float, default=2.0, help="job submissions per second")
    parser.add_argument("--fault-min-s", type=float, default=60.0, help="role, broker and database faults")
    parser.add_argument("--fault-max-s", type=float, default=120.0)
    parser.add_argument("--agent-kill-min-s", type=float, default=90.0, help="SIGKILL of one simulator (0 0: never)")
    parser.add_argument("--agent-kill-max-s", type=float, default=180.0)
    parser.add_argument("--agent-down-min-s", type=float, default=2.0, help="until the killed simulator starts again")
    parser.add_argument("--agent-down-max-s", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=int, default=1, help="memory is judged after this minute")
    parser.add_argument("--rss-tolerance", type=float, default=0.15, help="growth of one process past its warm-up")
    parser.add_argument("--rss-ceiling", type=float, default=0.5, help="any process over its role's warm-up RSS")
    parser.add_argument("--drain-timeout-s", type=float, default=240.0, help="bound on the wait for every job")
    parser.add_argument("--csv", help="the per-minute CSV (default: soak.csv in a new temporary directory)")
    parser.add_argument("--plot", help="the PNG (default: soak.png beside the CSV)")
    parser.add_argument("--json", help="write the figures and the verdict here")
    parser.add_argument("--logs-dir", help="copy every process's log here at the end (default: deleted)")
    args = parser.parse_args()
    if args.simulators < 1 or args.agents < args.simulators:
        parser.error("--agents must be at least --simulators, which must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    rng = random.Random(seed)  # nosec B311
    os.environ["PGAPPNAME"] = DRIVER_APP  # the database fault spares this process's connections
    csv_path = Path(args.csv) if args.csv else Path(tempfile.mkdtemp(prefix="aegis-soak-")) / "soak.csv"
    png_path = Path(args.plot) if args.plot else csv_path.with_suffix(".png")

    procs = Processes()
    database_url = scratch_database_url("soak")
    database = database_url.rpartition("/")[2]
    broker: Broker | None = None
    roles: dict[str, Role] = {}
    simulators: Simulators | None = None
    failed = True
    try:
        setup_django(database_url)
        token = _token()
        broker = Broker(procs.tmp / "broker")
        broker.start()
        roles = _roles(procs, database_url, broker.port, procs.tmp)
        for name in ("bridge", "dispatcher", "web"):
            roles[name].start()
        # Agents that connect before the bridge subscribed are never learned (their hello has no subscriber).
        wait_until(lambda: "bridge connected" in roles["bridge"].tail(100_000), 60, "the bridge connected")
        time.sleep(0.5)
        base_url = f"http://127.0.0.1:{roles['web'].env['SOAK_WEB_PORT']}"
        wait_until(lambda: _healthy(base_url), 60, "the web to answer /healthz", 0.2)
        simulators = Simulators(args.agents, args.simulators, broker.port, seed, procs.tmp)
        simulators.start_all()
        wait_until(lambda: online_agents(AGENT_PREFIX) == args.agents, 60 + args.agents / 20, "the agents online", 0.5)
        submitter = Submitter(base_url, token, simulators.agent_ids, args.jobs_per_s, random.Random(rng.random()))  # nosec B311
        run = Run(args, database, roles, broker, Supervisor(roles), submitter, simulators, CsvLog(csv_path))
        print(
            f"soak: seed {seed}, {args.minutes:g} min, {args.agents} agents in {args.simulators} simulators, "
            f"{args.jobs_per_s:g} jobs/s, faults every {args.fault_min_s:g}-{args.fault_max_s:g} s, "
            f"agent kills every {args.agent_kill_min_s:g}-{args.agent_kill_max_s:g} s; database {database}, "
            f"broker 127.0.0.1:{broker.port} (plain, persistence on), logs in {procs.tmp}, CSV {csv_path}",
            flush=True,
        )
        run.load_phase(rng)
        print("submitting stopped; waiting for every job to finish", flush=True)
        drained_s = run.drain()
        problems, memory = verdict(run, drained_s)
        result = summary(run, drained_s, problems, seed)
        print(
            f"jobs {result['jobs']}, tasks {result['tasks']} {result['task_states']}, drained in {drained_s:.0f} s, "
            f"submit retries {result['submit_retries']}"
        )
        print(
            f"faults {len(run.faults)}: role kills {result['kills']}, agent kills {simulators.kills}, "
            f"broker restarts {broker.restarts}, "
            f"database faults {sum(1 for _a, w in run.faults if w.startswith('terminate'))}"
        )
        print(f"role exits (restarted by the supervisor): {result['exits']}")
        print(f"RSS MB in the warm-up (highest sample of each): {fmt_rss(run.rss.warm(run.warmup_end))}")
        print("memory, per process judged (medians of the thirds of its life past warm-up):")
        print("  " + "\n  ".join(memory or ["(no process lived long enough to be judged)"]))
        print(f"CSV: {csv_path}")
        print("  " + "\n  ".join(summary_csv(csv_path)))
        title = (
            f"soak {datetime.now(UTC):%Y-%m-%d}, seed {seed}: {args.minutes:g} min, {args.agents} agents "
            f"in {args.simulators} simulators, {args.jobs_per_s:g} jobs/s, {len(run.faults)} faults"
        )
        print(plot(csv_path, png_path, title))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        if problems:
            print("SOAK FAILED:\n  " + "\n  ".join(problems), flush=True)
            return 1
        print("SOAK PASSED", flush=True)
        failed = False
        return 0
    finally:
        for role in roles.values():
            if failed:
                print(f"--- {role.name} log (tail) ---\n{role.tail()}", file=sys.stderr)
            role.stop()
        if simulators is not None:
            simulators.stop_all()
        if broker is not None:
            broker.stop()
        if failed and broker is not None and broker.log.exists():
            print(f"--- mosquitto log (tail) ---\n{broker.log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
        if args.logs_dir:
            with contextlib.suppress(OSError):
                shutil.copytree(
                    procs.tmp, args.logs_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mq", "static")
                )
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


def fmt_rss(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in values.items())


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
