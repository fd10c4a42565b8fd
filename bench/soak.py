"""Soak: the roles under steady load for N minutes while a role, the broker or the database fails every 30-60 s.

    .venv/bin/python bench/soak.py [--minutes 5] [--agents 200] [--seed 1] [--jobs-per-s 2]
        [--json /tmp/soak.json]

Everything is a separate process, with the production defaults (the PostgreSQL
pool on, ``DEBUG`` off): ``daphne`` (web), ``manage.py run_bridge``,
``manage.py run_dispatcher``, and ``python -m aegis_agent.simulate`` (N agents,
``sleep`` tasks of 0.05-0.5 s, 2 % of them fail), on a scratch database
``<name>_soak`` (from ``DATABASE_URL``) and a private plain Mosquitto on a free
port (persistence on, as the generated production configuration has it; no TLS).

Jobs go in through the REST API (``POST /api/v1/jobs/`` with an operator token)
at a steady rate, each with an idempotency key that is sent again until the web
answers (a killed web, a terminated backend): half ``each`` (1-10 agents by id),
half ``any`` (5-30 tasks, by label); a third allow 3 attempts with a 0.5 s backoff.

Every 30-60 s (seeded, printed) one fault: SIGKILL of the bridge, the dispatcher or
the web (restarted at once, as a supervisor would), a broker restart (SIGTERM,
start again on the same port), or ``pg_terminate_backend`` of every backend the
roles hold (each role names its connections with ``PGAPPNAME``). A role that exits
by itself (``ROLE_MAX_FAILED_STEPS``) is restarted too, and counted.

Every minute a line: tasks submitted and finished, throughput, completion latency
(task ``created_at`` → ``finished_at``) p50/p95, each role's RSS, the roles'
PostgreSQL connections, faults, role restarts. At the end submitting stops, the
soak waits (bounded) for every job to finish and checks: no task lost (every job
has the tasks it was submitted with, every task ended), none succeeded twice (one
``succeeded`` event per task at most, the job counters match the tasks), every
job finished, and each role's RSS at the end is within 20 % of its RSS after the
warm-up (the end of minute 1). It exits 1 and prints why when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    MOSQUITTO,
    PYTHON,
    ROOT,
    Processes,
    drop_database,
    free_port,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_port,
    wait_until,
)

DAPHNE = str(Path(PYTHON).parent / "daphne")
ROLES = ("web", "bridge", "dispatcher")
FAULTS = ("kill", "broker", "database")
APP_PREFIX = "soak-"
AGENT_PREFIX = "soak-"
DRIVER_APP = "soak-driver"
MB = 1024 * 1024


# --- processes ----------------------------------------------------------------------------------------------------


class Role:
    """One role process, restarted by ``Supervisor``: its log is appended to across restarts."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exits: list[int] = []  # exit codes of exits nobody asked for
        self.kills = 0

    def start(self) -> None:
        sink: IO[bytes]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(  # nosec B603
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        assert self.process is not None  # nosec B101
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def rss_mb(self) -> float:
        import psutil

        if self.process is None or self.process.poll() is not None:
            return float("nan")
        try:
            return float(psutil.Process(self.process.pid).memory_info().rss) / MB
        except psutil.NoSuchProcess:
            return float("nan")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Broker:
    """A private Mosquitto on a fixed port with persistence, so it can be restarted in place."""

    def __init__(self, directory: Path) -> None:
        from broker.mosquitto import AUTOSAVE_INTERVAL_S, MAX_QUEUED_MESSAGES

        self.port = free_port()
        self.directory = directory
        data = directory / "mq"
        data.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        user = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to "mosquitto", who cannot write here
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            f"autosave_interval {AUTOSAVE_INTERVAL_S}\n"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + user
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with (self.directory / "mosquitto.out").open("ab") as sink:  # what it says before its log file is open
            self.process = subprocess.Popen(  # nosec B603
                [MOSQUITTO, "-c", str(self.conf)], cwd=self.directory, stdout=sink, stderr=subprocess.STDOUT
            )
        wait_port(self.port, 20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # writes the persistence file: sessions and their queues survive
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1


class Supervisor:
    """Restarts every role that exits, as compose's ``restart: unless-stopped`` would, and counts the restarts."""

    def __init__(self, roles: dict[str, Role]) -> None:
        self.roles = roles
        self.lock = threading.Lock()
        self.events: list[tuple[float, str]] = []  # (monotonic, "bridge exited 1") for the minute lines

    def check(self) -> None:
        with self.lock:
            for role in self.roles.values():
                code = role.exited()
                if code is not None:
                    role.exits.append(code)
                    self.events.append((time.monotonic(), f"{role.name} exited {code}"))
                    print(f"  ! {role.name} exited with {code}; restarted", flush=True)
                    role.start()

    def kill(self, name: str) -> None:
        with self.lock:
            role = self.roles[name]
            role.kill()
            role.kills += 1
            role.start()


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


# --- measurements ----------------------------------------------------------------------------------------------


def _scalar_rows(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def finished_between(start: datetime, end: datetime) -> list[float]:
    rows = _scalar_rows(
        "SELECT EXTRACT(EPOCH FROM finished_at - created_at) FROM tasks WHERE finished_at >= %s AND finished_at < %s",
        [start, end],
    )
    return [float(row[0]) for row in rows]


def role_connections(database: str) -> dict[str, int]:
    rows = _scalar_rows(
        "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", [database]
    )
    return {str(name): int(count) for name, count in rows}


def terminate_role_backends(database: str) -> int:
    rows = _scalar_rows(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name LIKE %s AND application_name <> %s AND pid <> pg_backend_pid()",
        [database, APP_PREFIX + "%", DRIVER_APP],
    )
    return int(rows[0][0])


@dataclass
class Minute:
    minute: int
    submitted: int
    finished: int
    p50_s: float
    p95_s: float
    seconds: float
    rss_mb: dict[str, float]
    connections: dict[str, int]
    faults: list[str]
    restarts: list[str]

    def line(self) -> str:
        rss = "/".join(f"{self.rss_mb[name]:.0f}" for name in ROLES)
        conns = "/".join(str(self.connections.get(APP_PREFIX + name, 0)) for name in ROLES)
        return (
            f"{self.minute:>4} {self.submitted:>8} {self.finished:>8} {self.finished / self.seconds:>8.1f} "
            f"{self.p50_s:>6.2f} {self.p95_s:>6.2f} {rss:>13} {conns:>9}  {', '.join(self.faults) or '-'}"
            f"{'; ' + ', '.join(self.restarts) if self.restarts else ''}"
        )


HEADER = (
    " min submitted finished  tasks/s  p50 s  p95 s  RSS MB (w/b/d)  PG conns  faults; role exits\n"
    "                                          web/bridge/disp  w/b/d"
)


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


def _online(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


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
    simulator: subprocess.Popen[bytes]
    minutes: list[Minute] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    warmup_rss: dict[str, float] = field(default_factory=dict)

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

    def minute_line(self, minute: int, start: datetime, end: datetime, since: float, submitted: int) -> Minute:
        latencies = finished_between(start, end)
        now = time.monotonic()
        row = Minute(
            minute=minute,
            submitted=submitted,
            finished=len(latencies),
            p50_s=percentile(latencies, 50),
            p95_s=percentile(latencies, 95),
            seconds=now - since,
            rss_mb={name: role.rss_mb() for name, role in self.roles.items()},
            connections=role_connections(self.database),
            faults=[what for at, what in self.faults if since <= at < now],
            restarts=[what for at, what in self.supervisor.events if since <= at < now],
        )
        self.minutes.append(row)
        print(row.line(), flush=True)
        return row

    def load_phase(self, rng: random.Random) -> None:
        thread = threading.Thread(target=self.submitter.run, name="submitter", daemon=True)
        started = time.monotonic()
        thread.start()
        next_fault = started + rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
        minute_start, minute_wall = started, datetime.now(UTC)
        submitted_before = 0
        minute = 1
        end = started + self.args.minutes * 60
        print(HEADER, flush=True)
        while True:
            time.sleep(0.25)
            self.supervisor.check()
            self.check_simulator()
            now = time.monotonic()
            if now >= next_fault and now < end:
                what = self.inject(rng)
                print(f"  + {now - started:7.1f}s fault: {what}", flush=True)
                next_fault = now + rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
            if now >= min(started + 60 * minute, end):
                wall = datetime.now(UTC)
                with self.submitter.lock:
                    submitted = self.submitter.submitted_tasks
                self.minute_line(minute, minute_wall, wall, minute_start, submitted - submitted_before)
                if minute == self.args.warmup_minutes:
                    self.warmup_rss = {name: role.rss_mb() for name, role in self.roles.items()}
                submitted_before = submitted
                minute_start, minute_wall = now, wall
                minute += 1
            if now >= end:
                break
        self.submitter.stop.set()
        thread.join(200)

    def check_simulator(self) -> None:
        if self.simulator.poll() is not None:
            raise RuntimeError(f"the simulator exited with {self.simulator.returncode}")

    def drain(self) -> float:
        from tasks.models import Job

        ids = [job.job_id for job in self.submitter.jobs]
        started = time.monotonic()
        deadline = started + self.args.drain_timeout_s
        while time.monotonic() < deadline:
            self.supervisor.check()
            self.check_simulator()
            if not Job.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
                break
            time.sleep(1)
        return time.monotonic() - started

    def settle_roles(self) -> None:
        """Before the RSS check: every role's process has run a minute (a restart late in the run is young)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.supervisor.check()
            if all(time.monotonic() - role.started_at >= 60 for role in self.roles.values()):
                return
            time.sleep(1)


def verdict(run: Run, drained_s: float) -> list[str]:
    """Every check that failed, as one line each (empty: the soak passed)."""
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
    for name, role in run.roles.items():
        warm, end = run.warmup_rss.get(name), role.rss_mb()
        if warm is None or warm != warm:  # NaN: the role was down at the end of the warm-up minute
            problems.append(f"{name}: no RSS after warm-up")
        elif not abs(end - warm) <= run.args.rss_tolerance * warm:
            problems.append(f"{name}: RSS {end:.0f} MB at the end, {warm:.0f} MB after warm-up (limit ±20 %)")
    return problems


def summary(run: Run, drained_s: float, problems: list[str], seed: int) -> dict[str, Any]:
    from django.db.models import Count

    from tasks.models import Task

    ids = [job.job_id for job in run.submitter.jobs]
    states = dict(Task.objects.filter(job_id__in=ids).values_list("state").annotate(n=Count("id")))
    return {
        "seed": seed,
        "minutes": run.args.minutes,
        "agents": run.args.agents,
        "jobs": len(ids),
        "tasks": sum(job.expected_tasks for job in run.submitter.jobs),
        "task_states": states,
        "submit_retries": run.submitter.retries,
        "faults": [what for _at, what in run.faults],
        "kills": {name: role.kills for name, role in run.roles.items()},
        "exits": {name: role.exits for name, role in run.roles.items()},
        "broker_restarts": run.broker.restarts,
        "drain_s": round(drained_s, 1),
        "warmup_rss_mb": run.warmup_rss,
        "end_rss_mb": {name: role.rss_mb() for name, role in run.roles.items()},
        "per_minute": [vars(minute) for minute in run.minutes],
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long jobs are submitted (5: the CI form)")
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (one process)")
    parser.add_argument("--seed", type=int, help="faults, job mix and task failures (default: random, printed)")
    parser.add_argument("--jobs-per-s", type=float, default=2.0, help="job submissions per second")
    parser.add_argument("--fault-min-s", type=float, default=30.0)
    parser.add_argument("--fault-max-s", type=float, default=60.0)
    parser.add_argument("--warmup-minutes", type=int, default=1, help="the RSS after this minute is the baseline")
    parser.add_argument("--rss-tolerance", type=float, default=0.2)
    parser.add_argument("--drain-timeout-s", type=float, default=240.0, help="bound on the wait for every job")
    parser.add_argument("--json", help="write the figures and the verdict here")
    parser.add_argument("--logs-dir", help="copy every process's log here at the end (default: deleted)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    rng = random.Random(seed)
    os.environ["PGAPPNAME"] = DRIVER_APP  # the database fault spares this process's connections

    procs = Processes()
    database_url = scratch_database_url("soak")
    database = database_url.rpartition("/")[2]
    broker: Broker | None = None
    roles: dict[str, Role] = {}
    simulator: subprocess.Popen[bytes] | None = None
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
        simulator = procs.start(
            "simulator",
            [
                PYTHON,
                "-m",
                "aegis_agent.simulate",
                "--count",
                str(args.agents),
                "--port",
                str(broker.port),
                "--prefix",
                AGENT_PREFIX,
                "--failure-rate",
                "0.02",
                "--seed",
                str(seed),
                "--stats-every-s",
                "60",
                "--log-level",
                "WARNING",
            ],
        )
        wait_until(lambda: _online(AGENT_PREFIX) == args.agents, 60 + args.agents / 20, "the agents online")
        agent_ids = [f"{AGENT_PREFIX}{i}" for i in range(args.agents)]
        submitter = Submitter(base_url, token, agent_ids, args.jobs_per_s, random.Random(rng.random()))  # nosec B311
        run = Run(args, database, roles, broker, Supervisor(roles), submitter, simulator)
        print(
            f"soak: seed {seed}, {args.minutes:g} min, {args.agents} agents, {args.jobs_per_s:g} jobs/s, "
            f"faults every {args.fault_min_s:g}-{args.fault_max_s:g} s; database {database}, "
            f"broker 127.0.0.1:{broker.port} (plain, persistence on), logs in {procs.tmp}",
            flush=True,
        )
        run.load_phase(rng)
        print("submitting stopped; waiting for every job to finish", flush=True)
        drained_s = run.drain()
        run.settle_roles()
        problems = verdict(run, drained_s)
        result = summary(run, drained_s, problems, seed)
        print(
            f"jobs {result['jobs']}, tasks {result['tasks']} {result['task_states']}, drained in {drained_s:.0f} s, "
            f"submit retries {result['submit_retries']}"
        )
        print(
            f"faults {len(run.faults)}: kills {result['kills']}, broker restarts {broker.restarts}, "
            f"database faults {sum(1 for _a, w in run.faults if w.startswith('terminate'))}"
        )
        print(f"role exits (restarted by the supervisor): {result['exits']}")
        print(f"RSS MB after warm-up {fmt_rss(run.warmup_rss)}; at the end {fmt_rss(result['end_rss_mb'])}")
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
