"""Retry backoff: exponential ceiling, cap, equal jitter, and when a retried task becomes claimable again."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest

from tasks import actions
from tasks.engine.backoff import backoff_delay
from tasks.engine.reports import Report
from tasks.models import Task, TaskState

ONE_MICROSECOND = timedelta(microseconds=1)


@pytest.fixture
def jitter(monkeypatch):
    """Fix the jitter draw. ``backoff_delay`` binds ``random.random`` as a default argument, so patch that."""

    def fix(value: float) -> None:
        monkeypatch.setattr(backoff_delay, "__defaults__", (lambda: value,))

    return fix


# --- the delay function -------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 100.0), (6, 100.0), (30, 100.0)],
)
def test_delay_spans_upper_half_of_a_doubling_capped_ceiling(attempt, ceiling):
    assert backoff_delay(attempt, 10.0, 100.0, rand=lambda: 0.0) == ceiling / 2
    assert backoff_delay(attempt, 10.0, 100.0, rand=lambda: 0.5) == ceiling * 0.75
    assert backoff_delay(attempt, 10.0, 100.0, rand=lambda: 1.0) == ceiling


def test_random_delays_stay_within_half_ceiling_and_ceiling():
    draws = random.Random(42)
    for attempt in range(1, 12):
        ceiling = min(100.0, 10.0 * 2 ** (attempt - 1))
        for _ in range(200):
            delay = backoff_delay(attempt, 10.0, 100.0, rand=draws.random)
            assert ceiling / 2 <= delay <= ceiling


def test_default_jitter_stays_within_bounds():
    delays = {backoff_delay(2, 10.0, 100.0) for _ in range(200)}

    assert all(10.0 <= delay <= 20.0 for delay in delays)
    assert len(delays) > 1  # jittered, so a fleet does not retry in step


def test_ceiling_doubles_with_each_attempt_until_the_cap():
    ceilings = [backoff_delay(attempt, 5.0, 600.0, rand=lambda: 1.0) for attempt in range(1, 10)]

    assert ceilings == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]


def test_cap_below_base_wins():
    assert backoff_delay(1, 50.0, 20.0, rand=lambda: 1.0) == 20.0


# --- applied to tasks ---------------------------------------------------------------


@pytest.fixture
def failing_task(make_agent, spec, operator, frozen_clock):
    """Return a function that makes a1's pinned task fail its current attempt, and the task id."""
    make_agent("a1")
    job, _ = actions.submit_job(
        spec(target_agent_ids=["a1"], max_attempts=10, backoff_base_s=10.0, backoff_cap_s=100.0), operator
    )
    (task,) = Task.objects.filter(job=job)

    def fail_next_attempt() -> Task:
        (assignment,) = actions.claim_tasks("a1", 10)
        outcome = actions.report(
            "a1",
            Report(
                "failed", task.pk, assignment.attempt, message_id=uuid.uuid4().hex, error={"code": "E", "message": "x"}
            ),
        )
        assert outcome.state == TaskState.QUEUED
        return Task.objects.get(pk=task.pk)

    return fail_next_attempt


@pytest.mark.django_db
def test_failed_task_waits_within_backoff_bounds_of_its_attempt(failing_task, frozen_clock):
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (6, 100)]:
        failed_at = frozen_clock()
        task = failing_task()
        assert task.attempt == attempt
        wait = task.not_before - failed_at
        assert timedelta(seconds=ceiling / 2) - ONE_MICROSECOND <= wait <= timedelta(seconds=ceiling) + ONE_MICROSECOND
        frozen_clock.advance(ceiling)


@pytest.mark.django_db
@pytest.mark.parametrize(("draw", "seconds"), [(0.0, 5.0), (0.5, 7.5), (1.0, 10.0)])
def test_failed_task_not_before_follows_the_jitter_draw(failing_task, frozen_clock, jitter, draw, seconds):
    jitter(draw)

    task = failing_task()

    assert task.not_before == frozen_clock() + timedelta(seconds=seconds)


@pytest.mark.django_db
def test_task_is_not_claimable_before_not_before_and_is_after(failing_task, frozen_clock, jitter):
    jitter(0.0)
    task = failing_task()
    assert task.not_before == frozen_clock() + timedelta(seconds=5)

    frozen_clock.advance(4.9)
    assert actions.claim_tasks("a1", 10) == []
    assert actions.explain_task(task.pk).code == "not_before"
    assert "retry backoff" in actions.explain_task(task.pk).message

    frozen_clock.advance(0.1)
    (assignment,) = actions.claim_tasks("a1", 10)
    assert (assignment.task_id, assignment.attempt) == (task.pk, 2)


@pytest.mark.django_db
def test_second_retry_waits_longer_than_first(failing_task, frozen_clock, jitter):
    jitter(0.0)
    first = failing_task()
    first_wait = first.not_before - frozen_clock()
    frozen_clock.advance(first_wait.total_seconds())

    second = failing_task()

    assert second.not_before - frozen_clock() == 2 * first_wait


@pytest.mark.django_db
def test_expired_lease_is_retried_after_backoff(make_agent, spec, operator, frozen_clock, jitter):
    jitter(1.0)
    make_agent("a1")
    job, _ = actions.submit_job(
        spec(target_agent_ids=["a1"], delivery_timeout_s=30, backoff_base_s=8.0, backoff_cap_s=100.0), operator
    )
    actions.claim_tasks("a1", 10)
    frozen_clock.advance(31)
    actions.expire_leases()
    (task,) = Task.objects.filter(job=job)
    assert task.not_before == frozen_clock() + timedelta(seconds=8)

    frozen_clock.advance(7)
    assert actions.claim_tasks("a1", 10) == []
    frozen_clock.advance(1)
    assert len(actions.claim_tasks("a1", 10)) == 1
