"""Concurrent claims on PostgreSQL: several workers, one queue, no task given twice, no lost task, no deadlock error.

Each thread has its own database connection, as replicas of the dispatcher or
agents polling the HTTP API would. A barrier starts them at the same moment.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Count

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.errors import DomainError
from aegis_site.core.models import AuditEvent
from conftest import FakeClock
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.engine.claim import Assignment
from tasks.engine.reports import Report
from tasks.engine.submit import JobSpec
from tasks.models import HELD_STATES, OPEN_JOB_STATES, Job, JobMode, JobState, Task, TaskEvent, TaskEventKind, TaskState
from tests.test_queue_properties import assert_queue_invariants

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 8


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run each worker in its own thread (own connection), started together; re-raise the first error."""
    connections.close_all()  # hand the main thread's connection back: the threads need the pool's
    pool = None
    if connections["default"].vendor == "postgresql":
        # A fresh pool: a connection an earlier test's thread still holds would leave one worker short (in CI
        # the old pool.wait() then timed out and closed the pool under every later test).
        connections["default"].close_pool()
        pool = connections["default"].pool
    if pool is not None:
        # Each worker thread holds a connection for its whole run, as a role process does. The pool (production
        # settings) opens DB_POOL_SIZE at start and grows one connection at a time on demand; on a loaded CI
        # machine that growth outlasted DB_POOL_TIMEOUT (10 s) for the last of seven threads. So the threads'
        # connections are opened before the start line (within the pool's own maximum, unchanged). Polled, not
        # pool.wait(): that closes the pool when it times out.
        wanted = min(len(workers), pool.max_size)
        pool.open()
        pool.resize(min_size=wanted, max_size=pool.max_size)
        deadline = time.monotonic() + 120
        while pool.get_stats().get("pool_available", 0) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(index: int, worker: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = worker()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, w), name=f"worker-{i}") for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    if pool is not None:
        pool.resize(min_size=settings.DATABASES["default"]["OPTIONS"]["pool"]["min_size"], max_size=pool.max_size)
    assert not any(thread.is_alive() for thread in threads), "a worker hung (deadlock or lock wait)"
    if errors:
        raise errors[0]
    return results


def make_agents(count: int, max_concurrency: int, prefix: str = "worker") -> list[str]:
    now = clock.now()
    agents = [
        Agent(
            pk=f"{prefix}-{index}", max_concurrency=max_concurrency, connectivity=Connectivity.ONLINE, last_seen_at=now
        )
        for index in range(count)
    ]
    Agent.objects.bulk_create(agents)
    return [agent.pk for agent in agents]


def test_5000_tasks_claimed_by_8_threads_are_each_claimed_exactly_once(frozen_clock: FakeClock) -> None:
    total, batch = 5000, 50
    agent_ids = make_agents(THREADS, max_concurrency=100_000)
    spec = JobSpec(kind="echo", mode=JobMode.ANY, task_count=total, target_all=True)
    job, _ = actions.submit_job(spec, Actor("tester"))

    def claim_and_finish(agent_id: str) -> Callable[[], list[Assignment]]:
        def work() -> list[Assignment]:
            claimed: list[Assignment] = []
            while assignments := actions.claim_tasks(agent_id, batch):
                claimed += assignments
                reports = [
                    Report("succeeded", a.task_id, a.attempt, message_id=f"{agent_id}/{a.task_id}", result={"ok": 1})
                    for a in assignments
                ]
                outcomes = actions.apply_reports(agent_id, reports)
                assert {outcome.status for outcome in outcomes} == {"applied"}, outcomes
            return claimed

        return work

    per_thread = run_together([claim_and_finish(agent_id) for agent_id in agent_ids])

    claimed_ids = [assignment.task_id for claimed in per_thread for assignment in claimed]
    assert len(claimed_ids) == total, f"{len(claimed_ids) - len(set(claimed_ids))} tasks were claimed twice"
    assert set(claimed_ids) == set(Task.objects.values_list("pk", flat=True))
    assert {assignment.attempt for claimed in per_thread for assignment in claimed} == {1}
    assert sum(1 for claimed in per_thread if claimed) > 1, "one thread did all the work: nothing ran concurrently"
    assignments_per_task = Counter(
        TaskEvent.objects.filter(kind=TaskEventKind.ASSIGNED).values_list("task_id", flat=True)
    )
    assert set(assignments_per_task.values()) == {1}
    assert len(assignments_per_task) == total
    assert set(TaskEvent.objects.filter(kind=TaskEventKind.ASSIGNED).values_list("attempt", flat=True)) == {1}
    # Each thread's claims went to its own agent and stayed there.
    for agent_id, claimed in zip(agent_ids, per_thread, strict=True):
        owners = set(Task.objects.filter(pk__in=[a.task_id for a in claimed]).values_list("agent_id", flat=True))
        assert owners <= {agent_id}
    assert dict(Task.objects.values_list("state").annotate(n=Count("pk"))) == {TaskState.SUCCEEDED: total}
    assert set(Task.objects.values_list("attempt", flat=True)) == {1}
    job.refresh_from_db()
    assert (job.state, job.tasks_total, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (
        JobState.SUCCEEDED,
        total,
        total,
        0,
        0,
    )
    assert_queue_invariants()


def test_dispatchers_expiry_agents_and_operators_at_once_neither_fail_nor_break_invariants(
    frozen_clock: FakeClock,
) -> None:
    operator = Actor("tester")
    agent_ids = make_agents(6, max_concurrency=3, prefix="node")

    def submit(**fields: Any) -> int:
        fields.setdefault("kind", "echo")
        fields.setdefault("mode", JobMode.ANY)
        fields.setdefault("delivery_timeout_s", 20)
        fields.setdefault("execution_timeout_s", 40)
        fields.setdefault("backoff_base_s", 1.0)
        fields.setdefault("backoff_cap_s", 4.0)
        fields.setdefault("target_all", True)
        return actions.submit_job(JobSpec(**fields), operator)[0].pk

    bulk = submit(task_count=300, max_attempts=3)
    pinned = submit(mode=JobMode.EACH, max_attempts=2)
    limited = submit(task_count=60, max_in_flight=4, priority=1)
    rated = submit(task_count=40, rate_per_minute=10)
    doomed = submit(task_count=60, max_attempts=1, abort_failure_ratio=0.5, abort_min_finished=8)
    to_cancel = submit(task_count=60, priority=-1)
    jobs = [bulk, pinned, limited, rated, doomed, to_cancel]
    rounds = 60
    done = threading.Event()
    canceled = threading.Event()

    def dispatcher() -> None:
        """One replica of the dispatcher role: its steps, called directly, with a short poll interval."""
        replica = Dispatcher(batch_size=5)
        for _ in range(rounds):
            replica.expire_leases()
            replica.assign()
            time.sleep(0.02)

    def agents(mine: list[str], seed: int) -> Callable[[], int]:
        """The agents of one connection: accept, progress, finish or fail what they hold; some reports are late."""

        def work() -> int:
            rng = random.Random(seed)
            sent = 0
            while not done.is_set():
                held = list(
                    Task.objects.filter(agent_id__in=mine, state__in=HELD_STATES).values_list(
                        "agent_id", "pk", "attempt", "job_id"
                    )
                )
                by_agent: dict[str, list[Report]] = {}
                for agent_id, task_id, attempt, job_id in held:
                    roll = rng.random()
                    if roll < 0.15:
                        continue  # silent: the lease will run out
                    if job_id == doomed and roll < 0.7:
                        kind = "failed"
                    else:
                        kind = rng.choice(["accepted", "progress", "succeeded", "succeeded", "failed", "rejected"])
                    stale = rng.random() < 0.1
                    by_agent.setdefault(agent_id, []).append(
                        Report(
                            kind,
                            task_id,
                            attempt - 1 if stale else attempt,
                            message_id=f"{seed}-{sent}-{rng.random()}",
                            error={"code": "e", "message": "m"} if kind == "failed" else None,
                            retryable=rng.random() < 0.7,
                        )
                    )
                    sent += 1
                for agent_id, reports in by_agent.items():
                    actions.apply_reports(agent_id, reports)
                if not held:
                    done.wait(0.005)
            return sent

        return work

    def expirer() -> int:
        expired = 0
        while not done.wait(0.01):
            frozen_clock.advance(3)
            expired += actions.expire_leases(100)
        return expired

    def operators() -> int:
        rng = random.Random(7)
        acted = 0
        for step in range(rounds * 4):
            try:
                if step == rounds:
                    actions.cancel_job(to_cancel, operator, force=False)
                    canceled.set()
                elif step == 2 * rounds:  # end what the canceled job's agents still run
                    for pk in Task.objects.filter(job_id=to_cancel, state__in=HELD_STATES).values_list("pk", flat=True):
                        actions.cancel_task(pk, operator, force=True)
                else:
                    action = rng.choice(["cancel", "cancel", "force", "retry", "pause", "resume"])
                    if action in ("cancel", "force"):
                        task_id = Task.objects.filter(job_id=rng.choice(jobs)).order_by("?").values_list("pk")[:1]
                        for (pk,) in task_id:
                            actions.cancel_task(pk, operator, force=action == "force")
                    elif action == "retry":
                        actions.retry_failed(rng.choice([bulk, doomed]), operator)
                    elif action == "pause":
                        actions.pause_job(rng.choice([bulk, limited]), operator)
                    else:
                        actions.resume_job(rng.choice([bulk, limited]), operator)
                acted += 1
            except DomainError:
                pass  # refused because of the task's or job's state: a normal answer, not a failure
            time.sleep(0.01)
        return acted

    fleet_capacity = 6 * 3

    def dispatcher_then_stop() -> None:
        """Its rounds, then more until tasks were replaced beyond the fleet's capacity (or 30 s pass):
        on a loaded machine the agents' threads may not have finished anything within the rounds."""
        try:
            dispatcher()
            replica = Dispatcher(batch_size=5)
            deadline = time.monotonic() + 30
            while (
                TaskEvent.objects.filter(kind=TaskEventKind.ASSIGNED).count() <= fleet_capacity
                and time.monotonic() < deadline
            ):
                replica.expire_leases()
                replica.assign()
                time.sleep(0.02)
        finally:
            done.set()

    workers = [
        dispatcher_then_stop,
        dispatcher,
        dispatcher,
        agents(agent_ids[:3], seed=11),
        agents(agent_ids[3:], seed=12),
        expirer,
        operators,
    ]
    run_together(workers)

    assert TaskEvent.objects.filter(kind=TaskEventKind.ASSIGNED).count() > fleet_capacity, (
        "no task was finished or expired and replaced while the others ran: nothing ran concurrently"
    )
    assert_queue_invariants()

    # Everything left must still be able to finish: nothing is stuck or lost.
    for job_id in Job.objects.filter(state=JobState.PAUSED).values_list("pk", flat=True):
        actions.resume_job(job_id, operator)
    replica = Dispatcher(batch_size=50)
    unfinished = Task.objects.filter(state__in=[TaskState.QUEUED, *HELD_STATES])
    for _ in range(100):
        if not unfinished.exists():
            break
        frozen_clock.advance(60)
        actions.expire_leases(1000)
        replica.assign()
        for agent_id, task_id, attempt in unfinished.filter(state__in=HELD_STATES).values_list(
            "agent_id", "pk", "attempt"
        ):
            actions.report(agent_id, Report("succeeded", task_id, attempt, message_id=f"drain-{task_id}-{attempt}"))
        assert_queue_invariants()
    assert not unfinished.exists(), f"tasks that can never finish: {list(unfinished.values_list('pk', 'state'))}"
    assert not Job.objects.filter(state__in=OPEN_JOB_STATES).exists()
    if canceled.is_set():
        assert Job.objects.get(pk=to_cancel).state == JobState.CANCELED
    assert_queue_invariants()


def test_same_idempotency_key_from_8_threads_at_once_makes_one_job(frozen_clock: FakeClock) -> None:
    spec = JobSpec(
        kind="echo",
        mode=JobMode.ANY,
        task_count=20,
        idempotency_key="deploy-2026-01-01",
        target_all=True,
        allow_no_agents=True,
    )

    def submit() -> tuple[int, bool]:
        job, created = actions.submit_job(spec, Actor("tester"))
        return job.pk, created

    results = run_together([submit] * THREADS)

    assert sum(created for _, created in results) == 1
    assert len({job_id for job_id, _ in results}) == 1
    job = Job.objects.get(idempotency_key=spec.idempotency_key)
    assert Job.objects.count() == 1
    assert job.tasks_total == Task.objects.count() == 20
    assert TaskEvent.objects.filter(kind=TaskEventKind.CREATED).count() == 20
    assert AuditEvent.objects.filter(action="job.submit").count() == 1
    assert_queue_invariants()


def test_claims_waiting_on_a_rate_limited_job_count_into_one_rate_window(frozen_clock: FakeClock) -> None:
    """A claim that read the job before a concurrent claim committed must not overwrite that claim's count.

    The main thread holds the job row and claims two tasks while a second claim
    (another dispatcher) waits for that row; then a third claim comes. Together
    they may start only what the rate's token bucket holds: one task (4 a minute,
    one every 15 s).
    """
    operator = Actor("tester")
    make_agents(3, max_concurrency=10)
    spec = JobSpec(kind="echo", mode=JobMode.ANY, task_count=10, rate_per_minute=4, target_all=True)
    job, _ = actions.submit_job(spec, operator)
    claimed: dict[str, int] = {}

    def second_dispatcher() -> None:
        try:
            claimed["worker-1"] = len(actions.claim_tasks("worker-1", 4))
        finally:
            connections.close_all()

    waiter = threading.Thread(target=second_dispatcher)
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=job.pk)
        waiter.start()
        _wait_until_a_query_waits_for_a_lock()
        claimed["worker-0"] = len(actions.claim_tasks("worker-0", 2))
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    claimed["worker-2"] = len(actions.claim_tasks("worker-2", 4))

    assert claimed == {"worker-0": 1, "worker-1": 0, "worker-2": 0}
    assert Task.objects.filter(state=TaskState.ASSIGNED).count() == 1
    assert_queue_invariants()


def _wait_until_a_query_waits_for_a_lock(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the second claim never waited for the job row")
