"""Who gets work first: priority across jobs with and without rollout limits, pinned tasks whose agent no longer
matches, and rollouts that spread over the fleet and refill a freed slot at once.

On PostgreSQL the dispatcher's claim takes the one-statement path for jobs without rollout limits and the general
path for the rest (``tasks/engine/claim.py``, ``claim_pg.py``); on SQLite everything takes the general path. The
same tests run on both.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.wakeup import Listener
from conftest import FakeClock
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.engine.claim import rate_tokens
from tasks.engine.reports import Report
from tasks.engine.submit import JobSpec
from tasks.models import HELD_STATES, Job, JobMode, Task, TaskState
from tests.test_queue_properties import assert_queue_invariants, clear_queue_tables

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OPERATOR = Actor("fairness")

# (kind, value): no limit, limits that never bind at these sizes, and limits that do.
ROLLOUTS = [
    None,
    ("max_in_flight", 1000),
    ("rate_per_minute", 6000),
    ("max_in_flight_percent", 100),
    ("max_in_flight", 1),
    ("max_in_flight", 2),
    ("rate_per_minute", 1),
]


def _submit(priority: int, rollout: tuple[str, int] | None, count: int, **fields: object) -> Job:
    limits = {rollout[0]: rollout[1]} if rollout else {}
    fields.setdefault("target_all", not fields.get("target_labels"))
    fields.setdefault("allow_no_agents", True)
    spec = JobSpec(kind="echo", mode=JobMode.ANY, task_count=count, priority=priority, **limits, **fields)
    return actions.submit_job(spec, OPERATOR)[0]


def _agents(capacities: list[int]) -> list[str]:
    for index, capacity in enumerate(capacities):
        Agent.objects.create(
            pk=f"fair-{index}", max_concurrency=capacity, connectivity=Connectivity.ONLINE, last_seen_at=clock.now()
        )
    return [f"fair-{index}" for index in range(len(capacities))]


def _no_room(job: Job) -> bool:
    """The job's rollout lets no more of its tasks start now."""
    job.refresh_from_db()
    limit = job.in_flight_limit()
    if limit is not None and Task.objects.filter(job=job, state__in=HELD_STATES).count() >= limit:
        return True
    return bool(job.rate_per_minute) and rate_tokens(job, clock.now()) <= 0


def _assert_priority_kept(assigned_task_ids: list[int]) -> None:
    """No task went out while a higher-priority task that could have started instead stayed queued.

    Every job here targets every agent, so an agent that took a task could have
    taken any queued task of a job with room.
    """
    if not assigned_task_ids:
        return
    lowest_assigned = min(Task.objects.filter(pk__in=assigned_task_ids).values_list("priority", flat=True))
    passed_over = Task.objects.filter(state=TaskState.QUEUED, priority__gt=lowest_assigned).select_related("job")
    for task in passed_over:
        assert _no_room(task.job), (
            f"a priority {lowest_assigned} task was assigned while task {task.pk} of job {task.job_id} "
            f"(priority {task.priority}, rollout room left) stayed queued"
        )


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(ROLLOUTS), st.integers(1, 4)), min_size=2, max_size=5),
    capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    limit=st.integers(1, 4),
    rounds=st.integers(1, 3),
)
def test_dispatch_assigns_in_priority_order_across_limited_and_unlimited_jobs(
    jobs: list[tuple[int, tuple[str, int] | None, int]], capacities: list[int], limit: int, rounds: int
) -> None:
    clear_queue_tables()
    fake = FakeClock(START)
    clock.set_clock(fake)
    try:
        agent_ids = _agents(capacities)
        for priority, rollout, count in jobs:
            _submit(priority, rollout, count)
        for _ in range(rounds):
            claimed = actions.claim_for_agents(agent_ids, limit)
            _assert_priority_kept([a.task_id for assignments in claimed.values() for a in assignments])
            assert_queue_invariants()
            for agent_id, assignments in claimed.items():  # the agents finish their work; the clock moves on
                for a in assignments:
                    actions.report(agent_id, Report("succeeded", a.task_id, a.attempt, result={}))
            fake.advance(1)
    finally:
        clock.set_clock(None)


@pytest.mark.django_db(transaction=True)
def test_a_rollout_that_never_binds_keeps_its_priority_over_unlimited_work(frozen_clock: FakeClock) -> None:
    """The probe's case, through the dispatcher's own transactions: the high job's tasks go out first."""
    agent_ids = _agents([2, 2, 2])
    low = _submit(0, None, 20)
    high = _submit(5, ("max_in_flight", 1000), 4)

    claimed = actions.claim_for_agents(agent_ids, 10)

    jobs = Counter(a.job_id for assignments in claimed.values() for a in assignments)
    assert jobs == {high.pk: 4, low.pk: 2}


@pytest.mark.django_db
def test_a_pinned_task_whose_agent_no_longer_matches_waits_and_says_why(frozen_clock: FakeClock) -> None:
    """The target is checked again at claim time: a relabeled agent does not run the task; matching again, it does."""
    Agent.objects.create(
        pk="canary-1",
        labels={"ring": "canary"},
        max_concurrency=4,
        connectivity=Connectivity.ONLINE,
        last_seen_at=clock.now(),
    )
    for rollout in (None, ("max_in_flight", 5)):
        limits = {rollout[0]: rollout[1]} if rollout else {}
        actions.submit_job(JobSpec(kind="echo", target_labels={"ring": "canary"}, **limits), OPERATOR)
    tasks = list(Task.objects.order_by("pk"))
    Agent.objects.filter(pk="canary-1").update(labels={"ring": "prod"})

    assert actions.claim_for_agents(["canary-1"], 10) == {"canary-1": []}
    assert actions.claim_tasks("canary-1", 10) == []
    assert {actions.explain_task(task.pk).code for task in tasks} == {"agent_not_matching"}

    Agent.objects.filter(pk="canary-1").update(labels={"ring": "canary"})
    assert sorted(a.task_id for a in actions.claim_tasks("canary-1", 10)) == [task.pk for task in tasks]


@pytest.mark.django_db
def test_a_rollout_spreads_over_every_eligible_agent(frozen_clock: FakeClock) -> None:
    """Each freed slot goes to the next agent after the one the rollout last served, not back to the first ones."""
    agent_ids = _agents([4] * 6)
    job = _submit(0, ("max_in_flight", 2), 12)
    served: list[str] = []
    for _ in range(6):
        claimed = actions.claim_for_agents(agent_ids, 10)
        for agent_id, assignments in claimed.items():
            for a in assignments:
                served.append(agent_id)
                actions.report(agent_id, Report("succeeded", a.task_id, a.attempt, result={}))
    assert Counter(served) == dict.fromkeys(agent_ids, 2)
    assert Job.objects.get(pk=job.pk).tasks_succeeded == 12


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_finished_rollout_task_wakes_the_dispatcher_for_the_agent_of_the_next_one(frozen_clock: FakeClock) -> None:
    """Refill on report: the NOTIFY names the agent the rollout's next task is pinned to, not only the reporter."""
    agent_ids = _agents([1, 1, 1])
    actions.submit_job(JobSpec(kind="echo", max_in_flight=1, target_all=True), OPERATOR)
    [first] = [a for assignments in actions.claim_for_agents(agent_ids, 1).values() for a in assignments]
    reporter = Task.objects.get(pk=first.task_id).agent_id
    following = Task.objects.filter(state=TaskState.QUEUED).order_by("pk").first()
    assert following is not None
    assert following.agent_id != reporter

    listener = Listener()
    try:
        listener.wait(0.01, stop=threading.Event())  # LISTEN before the report commits
        actions.report(reporter, Report("succeeded", first.task_id, first.attempt, result={}))
        hinted: set[str] = set()
        for _ in range(20):
            hinted |= listener.wait(0.5, stop=threading.Event()) or set()
            if following.agent_id in hinted:
                break
    finally:
        listener.close()
    assert following.agent_id in hinted, hinted
