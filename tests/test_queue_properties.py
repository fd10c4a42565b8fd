"""The queue's invariants under random sequences of operations, against the real database.

A hypothesis state machine submits jobs, claims tasks for several agents, sends
agent reports (current, stale and redelivered), moves the clock and expires
leases, cancels, retries, pauses and resumes, all through ``tasks.actions``.
After every step it checks what the whole system relies on: a task is held by at
most the one agent it was assigned to, no agent runs more than its capacity, no
task is lost, attempts stay within bounds, every transition has its history row,
and job counters equal the task rows.

``HYPOTHESIS_PROFILE=thorough`` (or ``quick``) changes how hard it searches.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db.models import Q
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from aegis_site.core.errors import InvalidTransition
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from conftest import FakeClock
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.engine import checks
from tasks.engine.claim import rate_burst
from tasks.engine.reports import REPORT_KINDS, Report
from tasks.engine.submit import JobSpec
from tasks.models import (
    ACTIVE_JOB_STATES,
    HELD_STATES,
    OPEN_JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobMode,
    JobState,
    Task,
    TaskEvent,
    TaskEventKind,
    TaskState,
)

# (max_examples, stateful_step_count) per profile; "default" runs in well under a minute on SQLite.
PROFILES = {"quick": (20, 30), "default": (150, 50), "thorough": (1000, 80)}

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MAX_JOBS = 5  # per example: later steps work on these jobs instead of queueing more
DELIVERY_TIMEOUT_S = 30
EXECUTION_TIMEOUT_S = 60
RATE_WINDOW = timedelta(minutes=1)
FAILED_COUNTED_STATES = (TaskState.FAILED, TaskState.TIMED_OUT)
CLOSED_BY_ROLLUP = (JobState.SUCCEEDED, JobState.FAILED)


# --- Invariants, shared with the concurrency tests ---------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    id: int
    kind: str
    attempt: int
    from_state: str
    to_state: str
    agent_id: str


def assert_queue_invariants() -> None:
    """Check every queue invariant over all rows; raise ``AssertionError`` naming the first broken one."""
    agents = dict(Agent.objects.values_list("pk", "max_concurrency"))
    jobs = Job.objects.in_bulk()
    tasks = list(Task.objects.order_by("pk"))
    history: dict[int, list[_Event]] = defaultdict(list)
    for task_id, pk, kind, attempt, from_state, to_state, agent_id in TaskEvent.objects.order_by("pk").values_list(
        "task_id", "pk", "kind", "attempt", "from_state", "to_state", "agent_id"
    ):
        history[task_id].append(_Event(pk, kind, attempt, from_state, to_state, agent_id))
    _assert_rate_limits_kept(jobs)

    held_per_agent: Counter[str] = Counter()
    held_per_job: Counter[int] = Counter()
    per_job_state: dict[int, Counter[str]] = defaultdict(Counter)
    for task in tasks:
        job = jobs[task.job_id]
        per_job_state[task.job_id][task.state] += 1
        events = history[task.pk]
        _assert_history_explains_state(task, events)
        assert task.attempt <= task.max_attempts, f"task {task.pk}: attempt {task.attempt} > {task.max_attempts}"

        assignments = Counter(e.attempt for e in events if e.kind == TaskEventKind.ASSIGNED)
        doubled = [attempt for attempt, count in assignments.items() if count > 1]
        assert not doubled, f"task {task.pk}: attempts {doubled} were assigned more than once"

        if task.state in HELD_STATES:
            assert task.agent_id is not None, f"task {task.pk} is {task.state} without an agent"
            assigned = [e for e in events if e.kind == TaskEventKind.ASSIGNED and e.attempt == task.attempt]
            assert assigned, f"task {task.pk} is held at attempt {task.attempt}, which was never assigned"
            assert assigned[-1].agent_id == task.agent_id, (
                f"task {task.pk} is held by {task.agent_id} but attempt {task.attempt} "
                f"was assigned to {assigned[-1].agent_id}"
            )
            assert task.lease_expires_at is not None, f"held task {task.pk} has no lease: it would never expire"
            if job.state not in OPEN_JOB_STATES:
                assert task.cancel_requested_at is not None, (
                    f"task {task.pk} still runs in {job.state} job {job.pk} without a cancel sent"
                )
            held_per_agent[task.agent_id] += 1
            held_per_job[task.job_id] += 1
        elif task.state == TaskState.QUEUED:
            assert job.state in OPEN_JOB_STATES, f"task {task.pk} is lost: queued in {job.state} job {job.pk}"
            if task.pinned:
                assert task.agent_id is not None, f"pinned task {task.pk} lost its agent"
        else:
            assert task.state in TERMINAL_STATES, f"task {task.pk} has unknown state {task.state!r}"

    for agent_id, held in held_per_agent.items():
        assert held <= agents[agent_id], f"agent {agent_id} holds {held} tasks, max_concurrency {agents[agent_id]}"

    for job in jobs.values():
        counts = per_job_state[job.pk]
        real = {
            "tasks_total": sum(counts.values()),
            "tasks_succeeded": counts[TaskState.SUCCEEDED],
            "tasks_failed": sum(counts[state] for state in FAILED_COUNTED_STATES),
            "tasks_canceled": counts[TaskState.CANCELED],
        }
        stored = {name: getattr(job, name) for name in real}
        assert stored == real, f"job {job.pk} ({job.state}) counters {stored} != task rows {real}"
        limit = job.in_flight_limit()
        if limit is not None:
            assert held_per_job[job.pk] <= limit, f"job {job.pk}: {held_per_job[job.pk]} in flight, limit {limit}"
        open_tasks = sum(counts[state] for state in (TaskState.QUEUED, *HELD_STATES))
        if job.state in CLOSED_BY_ROLLUP:
            assert not open_tasks, f"job {job.pk} is {job.state} but {open_tasks} of its tasks are not finished"
        if job.tasks_total and not job.continuous and not open_tasks:
            assert job.state not in OPEN_JOB_STATES, f"job {job.pk}: every task finished but the job is {job.state}"
            assert job.finished_at is not None, f"{job.state} job {job.pk}: every task finished, no finished_at"
        if job.state in OPEN_JOB_STATES:
            assert job.finished_at is None, f"{job.state} job {job.pk} has finished_at {job.finished_at}"


def _assert_rate_limits_kept(jobs: dict[int, Job]) -> None:
    """No job with ``rate_per_minute`` had more assignments in one rate window (it opens at an assignment)."""
    limited = {pk: job.rate_per_minute for pk, job in jobs.items() if job.rate_per_minute}
    if not limited:
        return
    assigned = TaskEvent.objects.filter(kind=TaskEventKind.ASSIGNED, task__job_id__in=limited).order_by("pk")
    windows: dict[int, tuple[datetime, int]] = {}
    for job_id, at in assigned.values_list("task__job_id", "created_at"):
        start, count = windows.get(job_id, (at, 0))
        if at - start >= RATE_WINDOW:
            start, count = at, 0
        windows[job_id] = (start, count + 1)
        assert count + 1 <= limited[job_id], (
            f"job {job_id}: {count + 1} assignments in the rate window from {start}, rate_per_minute {limited[job_id]}"
        )
    _assert_rate_paced(limited, list(assigned.values_list("task__job_id", "created_at")))


def _assert_rate_paced(limited: dict[int, int], assigned: list[tuple[int, datetime]]) -> None:
    """The token bucket: between any two assignments of a job, at most its burst plus what refilled in between."""
    times: dict[int, list[datetime]] = defaultdict(list)
    for job_id, at in assigned:
        times[job_id].append(at)
    for job_id, stamps in times.items():
        rate = limited[job_id]
        for first in range(len(stamps)):
            for last in range(first, len(stamps)):
                refilled = (stamps[last] - stamps[first]) * rate // RATE_WINDOW
                assert last - first + 1 <= rate_burst(rate) + refilled, (
                    f"job {job_id}: {last - first + 1} assignments from {stamps[first]} to {stamps[last]}, "
                    f"rate_per_minute {rate}"
                )


def _assert_history_explains_state(task: Task, events: list[_Event]) -> None:
    """Replaying the history from ``created`` must arrive at the task's state: every transition has its row."""
    assert events, f"task {task.pk} has no history"
    first = events[0]
    assert (first.kind, first.to_state, first.attempt) == (TaskEventKind.CREATED, TaskState.QUEUED, 0), (
        f"task {task.pk}: history starts with {first}"
    )
    state, attempt = first.to_state, first.attempt
    for event in events[1:]:
        assert event.from_state == state, (
            f"task {task.pk}: event {event.id} ({event.kind}) starts from {event.from_state!r} "
            f"but the history had reached {state!r}; a transition has no row"
        )
        if event.to_state != event.from_state:
            assert event.kind not in (TaskEventKind.STALE, TaskEventKind.CANCEL_REQUESTED), (
                f"task {task.pk}: {event.kind} event {event.id} records a state change"
            )
            state, attempt = event.to_state, event.attempt
    assert state == task.state, f"task {task.pk} is {task.state} but its history ends in {state}"
    assert attempt == task.attempt, f"task {task.pk} is at attempt {task.attempt}, its last transition at {attempt}"


# --- The state machine ---------------------------------------------------------------------------------------------


def clear_queue_tables() -> None:
    for model in (TaskEvent, OutboxMessage, AuditEvent, Task, Job, Agent):
        model.objects.all().delete()


_INDEX = st.integers(min_value=0, max_value=10_000)


class QueueMachine(RuleBasedStateMachine):
    """Random operator, agent and dispatcher actions; the oracle predicts each action's direct effect."""

    def __init__(self) -> None:
        super().__init__()
        clear_queue_tables()
        self.clock = FakeClock(START)
        clock.set_clock(self.clock)
        self.actor = Actor("hypothesis")
        self.agent_ids: list[str] = []
        self.job_ids: list[int] = []
        self.task_ids: list[int] = []
        self.deliveries: list[tuple[str, int, int]] = []  # (agent, task, attempt) of every assignment
        self.sent: list[tuple[str, Report]] = []
        self.stored_message_ids: set[str] = set()
        self.message_seq = 0
        self.keys: dict[str, tuple[int, str]] = {}  # key: (its job, the spec's fingerprint)

    def teardown(self) -> None:
        clock.set_clock(None)

    # -- helpers

    def _message_id(self) -> str:
        self.message_seq += 1
        return f"msg-{self.message_seq}"

    def _agent(self, index: int) -> str:
        return self.agent_ids[index % len(self.agent_ids)]

    def _task(self, index: int) -> int:
        return self.task_ids[index % len(self.task_ids)]

    def _job(self, index: int) -> int:
        return self.job_ids[index % len(self.job_ids)]

    def _eligible(self, agent: Agent) -> list[Task]:
        """Queued tasks this agent may take now, in the queue's order (priority, then age)."""
        now = clock.now()
        any_jobs = [
            job.pk
            for job in Job.objects.filter(state__in=ACTIVE_JOB_STATES, mode=JobMode.ANY)
            if not job.target_agent_ids or agent.pk in job.target_agent_ids
        ]
        return list(
            Task.objects.filter(state=TaskState.QUEUED, not_before__lte=now, job__state__in=ACTIVE_JOB_STATES)
            .filter(Q(agent_id=agent.pk) | Q(agent_id__isnull=True, job_id__in=any_jobs))
            .select_related("job")
            .order_by("-priority", "pk")
        )

    def _expected_status(self, agent_id: str, report: Report) -> str:
        if report.message_id in self.stored_message_ids:
            return "duplicate"
        task = Task.objects.filter(pk=report.task_id).first()
        if task is None:
            return "not_found"
        ever_held = TaskEvent.objects.filter(
            task_id=task.pk, kind=TaskEventKind.ASSIGNED, agent_id=agent_id, attempt=report.attempt
        ).exists()
        if task.agent_id != agent_id and not ever_held:
            return "not_found"
        if (
            task.agent_id != agent_id
            or report.attempt != task.attempt
            or task.state not in HELD_STATES
            or (report.kind == "accepted" and task.state == TaskState.RUNNING)
        ):
            return "stale"
        return "applied"

    def _send(self, agent_id: str, report: Report) -> None:
        """Send one report and check that it is fenced, deduplicated or applied exactly as the protocol says."""
        expected = self._expected_status(agent_id, report)
        before = Task.objects.filter(pk=report.task_id).first()
        outcome = actions.report(agent_id, report)
        assert outcome.status == expected, f"{report} from {agent_id}: {outcome} (expected {expected})"
        if expected in ("applied", "stale") and report.message_id:
            self.stored_message_ids.add(report.message_id)
        if before is None:
            return
        after = Task.objects.get(pk=report.task_id)
        if expected != "applied":
            assert _snapshot(after) == _snapshot(before), f"{expected} report {report} changed task {before.pk}"
            if expected == "stale":
                assert TaskEvent.objects.filter(message_id=report.message_id, kind=TaskEventKind.STALE).exists()
            return
        self._check_applied(before, after, report)

    def _check_applied(self, before: Task, after: Task, report: Report) -> None:
        now = clock.now()
        job = Job.objects.get(pk=after.job_id)
        if report.kind in ("accepted", "progress"):
            assert after.state == TaskState.RUNNING
            assert after.lease_expires_at == now + timedelta(seconds=job.execution_timeout_s)
        elif report.kind == "succeeded":
            assert after.state == TaskState.SUCCEEDED
            assert after.result == report.result
        else:
            retryable = report.kind == "rejected" or report.retryable
            if before.cancel_requested_at is not None:
                assert after.state == TaskState.CANCELED
            elif retryable and before.attempt < before.max_attempts:
                assert after.state == TaskState.QUEUED
                assert after.not_before > now, "a retried attempt must wait for its backoff"
                assert after.agent_id == (before.agent_id if before.pinned else None)
            else:
                assert after.state == TaskState.FAILED
        assert after.attempt == before.attempt

    # -- setup

    @initialize(
        capacities=st.lists(st.integers(min_value=1, max_value=4), min_size=2, max_size=4),
        offline=st.sets(st.integers(min_value=0, max_value=3), max_size=1),
    )
    def create_agents(self, capacities: list[int], offline: set[int]) -> None:
        for index, capacity in enumerate(capacities):
            agent = Agent.objects.create(
                pk=f"agent-{index}",
                max_concurrency=capacity,
                connectivity=Connectivity.OFFLINE if index in offline else Connectivity.ONLINE,
                last_seen_at=clock.now(),
            )
            self.agent_ids.append(agent.pk)

    # -- submitters

    @precondition(lambda self: len(self.job_ids) < MAX_JOBS)
    @rule(
        mode=st.sampled_from([JobMode.EACH, JobMode.ANY]),
        count=st.integers(min_value=1, max_value=4),
        max_attempts=st.integers(min_value=1, max_value=3),
        abort=st.none() | st.tuples(st.sampled_from([0.0, 0.34, 0.5]), st.integers(min_value=1, max_value=3)),
        rollout=st.sampled_from([None, None, ("count", 1), ("count", 2), ("percent", 50), ("rate", 1), ("rate", 2)]),
        priority=st.integers(min_value=0, max_value=2),
        chosen_agents=st.none() | st.sets(_INDEX, min_size=1, max_size=2),
        key=st.none() | st.sampled_from(["key-1", "key-2"]),
        delay=st.sampled_from([0, 0, 0, 20]),
    )
    def submit(
        self,
        mode: str,
        count: int,
        max_attempts: int,
        abort: tuple[float, int] | None,
        rollout: tuple[str, int] | None,
        priority: int,
        chosen_agents: set[int] | None,
        key: str | None,
        delay: int,
    ) -> None:
        target_ids = sorted({self._agent(index) for index in chosen_agents}) if chosen_agents else []
        spec = JobSpec(
            kind="echo",
            mode=mode,
            task_count=count,
            target_agent_ids=target_ids,
            target_all=not target_ids,
            allow_no_agents=True,  # the machine explores every job, the checks are tested on their own
            allow_unsupported_kind=True,
            max_attempts=max_attempts,
            priority=priority,
            backoff_base_s=5.0,
            backoff_cap_s=20.0,
            delivery_timeout_s=DELIVERY_TIMEOUT_S,
            execution_timeout_s=EXECUTION_TIMEOUT_S,
            not_before=clock.now() + timedelta(seconds=delay) if delay else None,
            idempotency_key=key,
            max_in_flight=rollout[1] if rollout and rollout[0] == "count" else None,
            max_in_flight_percent=rollout[1] if rollout and rollout[0] == "percent" else None,
            rate_per_minute=rollout[1] if rollout and rollout[0] == "rate" else None,
            abort_failure_ratio=abort[0] if abort else None,
            abort_min_finished=abort[1] if abort else 1,
        )
        if key in self.keys and self.keys[key][1] != checks.fingerprint(spec):
            with pytest.raises(checks.IdempotencyConflict) as conflict:
                actions.submit_job(spec, self.actor)
            assert conflict.value.details["existing_job"] == self.keys[key][0], "a reused key names its job"
            return
        job, created = actions.submit_job(spec, self.actor)
        if key in self.keys:
            assert (created, job.pk) == (False, self.keys[key][0]), "an idempotency key must return its first job"
            return
        assert created
        if key:
            self.keys[key] = (job.pk, checks.fingerprint(spec))
        expected_total = count if mode == JobMode.ANY else len(target_ids or self.agent_ids)
        assert job.tasks_total == expected_total
        self.job_ids.append(job.pk)
        self.task_ids.extend(Task.objects.filter(job_id=job.pk).order_by("pk").values_list("pk", flat=True))

    # -- dispatcher and agents

    @precondition(lambda self: self.task_ids)
    @rule(agent_index=_INDEX, limit=st.integers(min_value=1, max_value=4), push=st.booleans())
    def claim(self, agent_index: int, limit: int, push: bool) -> None:
        """An agent polls for work over HTTP (pull) or the dispatcher assigns to it (push)."""
        self._claim_and_check(self._agent(agent_index), limit, push)

    @precondition(lambda self: self.task_ids)
    @rule(limit=st.integers(min_value=1, max_value=4))
    def dispatch_round(self, limit: int) -> None:
        """One dispatcher pass: a push claim for every agent in turn."""
        for agent_id in self.agent_ids:
            self._claim_and_check(agent_id, limit, push=True)

    def _claim_and_check(self, agent_id: str, limit: int, push: bool) -> None:
        agent = Agent.objects.get(pk=agent_id)
        held = Task.objects.filter(agent_id=agent.pk, state__in=HELD_STATES).count()
        eligible = self._eligible(agent)
        reachable = not push or agent.connectivity == Connectivity.ONLINE
        most = min(limit, max(agent.max_concurrency - held, 0), len(eligible)) if reachable else 0
        outbox_before = OutboxMessage.objects.filter(agent_id=agent.pk, message_type="task.assign").count()

        got = actions.claim_tasks(agent.pk, limit, push=push)

        claimed = [assignment.task_id for assignment in got]
        assert len(set(claimed)) == len(claimed), f"one claim returned a task twice: {claimed}"
        assert set(claimed) <= {task.pk for task in eligible}, "claimed a task that was not claimable"
        if any(task.job.has_rollout_limit for task in eligible):
            assert len(got) <= most
        else:
            # Without rollout limits a claim takes exactly the head of the queue, as much as fits.
            assert sorted(claimed) == sorted(task.pk for task in eligible[:most]), (
                f"{agent.pk} claimed {claimed}, the queue's head was {[t.pk for t in eligible[:most]]}"
            )
        for assignment in got:
            task = Task.objects.get(pk=assignment.task_id)
            assert (task.state, task.agent_id, task.attempt) == (TaskState.ASSIGNED, agent.pk, assignment.attempt)
            self.deliveries.append((agent.pk, assignment.task_id, assignment.attempt))
        outbox_after = OutboxMessage.objects.filter(agent_id=agent.pk, message_type="task.assign").count()
        assert outbox_after - outbox_before == (len(got) if push else 0)

    @precondition(lambda self: self.deliveries)
    @rule(kinds=st.lists(st.sampled_from(REPORT_KINDS), min_size=1, max_size=4), retryable=st.booleans())
    def agents_work(self, kinds: list[str], retryable: bool) -> None:
        """Every agent reports on the tasks it holds now (current attempts), one report each."""
        held = Task.objects.filter(state__in=HELD_STATES).order_by("pk").values_list("agent_id", "pk", "attempt")
        for position, (agent_id, task_id, attempt) in enumerate(held):
            item = _report(kinds[position % len(kinds)], task_id, attempt, self._message_id(), retryable)
            self.sent.append((agent_id, item))
            self._send(agent_id, item)

    @precondition(lambda self: self.deliveries)
    @rule(
        index=_INDEX,
        kind=st.sampled_from(REPORT_KINDS),
        retryable=st.booleans(),
        twist=st.sampled_from(["current", "current", "any_delivery", "older_attempt", "other_agent"]),
    )
    def report(self, index: int, kind: str, retryable: bool, twist: str) -> None:
        """An agent reports on a task it was given: usually the current attempt, sometimes an old one."""
        options = self.deliveries
        if twist != "any_delivery":
            held = set(Task.objects.filter(state__in=HELD_STATES).values_list("agent_id", "pk", "attempt"))
            options = [delivery for delivery in self.deliveries if delivery in held] or self.deliveries
        agent_id, task_id, attempt = options[index % len(options)]
        if twist == "older_attempt":
            attempt -= 1
        elif twist == "other_agent":
            agent_id = self.agent_ids[(self.agent_ids.index(agent_id) + 1) % len(self.agent_ids)]
        item = _report(kind, task_id, attempt, self._message_id(), retryable)
        self.sent.append((agent_id, item))
        self._send(agent_id, item)

    @precondition(lambda self: self.sent)
    @rule(index=_INDEX)
    def redeliver(self, index: int) -> None:
        """MQTT is at-least-once: the same message (same id) arrives again and must change nothing."""
        agent_id, item = self.sent[index % len(self.sent)]
        self._send(agent_id, item)

    @precondition(lambda self: self.task_ids)
    @rule(
        agent_index=_INDEX,
        task_index=_INDEX,
        attempt=st.integers(min_value=0, max_value=4),
        kind=st.sampled_from(REPORT_KINDS),
    )
    def report_on_any_task(self, agent_index: int, task_index: int, attempt: int, kind: str) -> None:
        """Reports about tasks an agent may never have held, or that do not exist."""
        task_id = self._task(task_index) if task_index % 7 else max(self.task_ids) + 1000
        item = _report(kind, task_id, attempt, self._message_id(), retryable=True)
        self._send(self._agent(agent_index), item)

    @precondition(lambda self: self.deliveries)
    @rule(index=_INDEX)
    def finish_in_one_batch(self, index: int) -> None:
        """accepted, progress and succeeded in one batch, with the first message repeated at the end."""
        held = set(Task.objects.filter(state=TaskState.ASSIGNED).values_list("agent_id", "pk", "attempt"))
        options = [delivery for delivery in self.deliveries if delivery in held]
        if not options:
            return
        agent_id, task_id, attempt = options[index % len(options)]
        first = _report("accepted", task_id, attempt, self._message_id())
        batch = [
            first,
            _report("progress", task_id, attempt, self._message_id()),
            _report("succeeded", task_id, attempt, self._message_id()),
            first,
        ]
        outcomes = actions.apply_reports(agent_id, batch)
        assert [o.status for o in outcomes] == ["applied", "applied", "applied", "duplicate"], outcomes
        self.stored_message_ids.update(item.message_id for item in batch if item.message_id)
        self.sent.extend((agent_id, item) for item in batch[:3])
        assert Task.objects.get(pk=task_id).state == TaskState.SUCCEEDED

    @rule(seconds=st.sampled_from([1, 5, 31, 61, 200]), expire=st.booleans())
    def advance_clock(self, seconds: int, expire: bool) -> None:
        now = self.clock.advance(seconds)
        if not expire:
            return
        expired = Task.objects.filter(state__in=HELD_STATES, lease_expires_at__lt=now).count()
        assert actions.expire_leases() == expired
        assert not Task.objects.filter(state__in=HELD_STATES, lease_expires_at__lt=now).exists()

    # -- operators

    @precondition(lambda self: self.task_ids)
    @rule(index=_INDEX, force=st.booleans(), scope=st.sampled_from(["job", "task", "held_task"]))
    def cancel(self, index: int, force: bool, scope: str) -> None:
        if scope == "job":
            self._cancel_job(self._job(index), force)
            return
        held = list(Task.objects.filter(state__in=HELD_STATES).order_by("pk").values_list("pk", flat=True))
        self._cancel_task(held[index % len(held)] if held and scope == "held_task" else self._task(index), force)

    def _cancel_task(self, task_id: int, force: bool) -> None:
        before = Task.objects.get(pk=task_id)
        refused = before.state in TERMINAL_STATES or (
            before.state in HELD_STATES and before.cancel_requested_at is not None and not force
        )
        try:
            after = actions.cancel_task(before.pk, self.actor, force=force)
        except InvalidTransition:
            assert refused, f"cancel of {before.state} task {before.pk} (force={force}) was refused"
            return
        assert not refused, f"cancel of {before.state} task {before.pk} (force={force}) was accepted"
        if before.state == TaskState.QUEUED or force:
            assert after.state == TaskState.CANCELED
        else:
            assert after.state == before.state
            assert after.cancel_requested_at is not None
        if before.state in HELD_STATES:
            assert OutboxMessage.objects.filter(
                agent_id=before.agent_id, message_type="task.cancel", payload__task_id=before.pk
            ).exists(), "the agent holding a canceled task must be told"

    def _cancel_job(self, job_id: int, force: bool) -> None:
        was_open = Job.objects.get(pk=job_id).state in OPEN_JOB_STATES
        try:
            job = actions.cancel_job(job_id, self.actor, force=force)
        except InvalidTransition:
            assert not was_open, f"cancel of open job {job_id} was refused"
            return
        assert was_open, f"cancel of closed job {job_id} was accepted"
        assert job.state == JobState.CANCELED
        assert not job.tasks.filter(state=TaskState.QUEUED).exists()
        still_held = job.tasks.filter(state__in=HELD_STATES)
        if force:
            assert not still_held.exists(), "a forced cancel ends held tasks at once"
        else:
            assert not still_held.filter(cancel_requested_at__isnull=True).exists()

    @precondition(lambda self: self.task_ids)
    @rule(index=_INDEX, scope=st.sampled_from(["task", "job", "job_subset"]))
    def retry(self, index: int, scope: str) -> None:
        if scope == "task":
            ended = list(Task.objects.filter(state__in=TERMINAL_STATES).order_by("pk").values_list("pk", flat=True))
            self._retry_task(ended[index % len(ended)] if ended else self._task(index))
        else:
            self._retry_failed(self._job(index), subset=scope == "job_subset")

    def _retry_failed(self, job_id: int, subset: bool) -> None:
        job = Job.objects.get(pk=job_id)
        failed = list(job.tasks.filter(state__in=FAILED_COUNTED_STATES).order_by("pk").values_list("pk", flat=True))
        chosen = failed[::2] if subset else None
        try:
            count = actions.retry_failed(job.pk, self.actor, task_ids=chosen)
        except InvalidTransition:
            assert job.state == JobState.CANCELED, f"retry of {job.state} job {job.pk} was refused"
            return
        assert job.state != JobState.CANCELED, "a canceled job must not be retried"
        retried = failed if chosen is None else chosen
        assert count == len(retried)
        assert set(Task.objects.filter(pk__in=retried).values_list("state", flat=True)) <= {TaskState.QUEUED}
        if retried:
            assert Job.objects.get(pk=job.pk).state in OPEN_JOB_STATES

    def _retry_task(self, task_id: int) -> None:
        before = Task.objects.select_related("job").get(pk=task_id)
        allowed = before.state in (*FAILED_COUNTED_STATES, TaskState.CANCELED) and before.job.state != JobState.CANCELED
        try:
            after = actions.retry_task(before.pk, self.actor)
        except InvalidTransition:
            assert not allowed, f"retry of {before.state} task {before.pk} was refused"
            return
        assert allowed, f"retry of {before.state} task {before.pk} in a {before.job.state} job was accepted"
        assert after.state == TaskState.QUEUED
        assert after.attempt < after.max_attempts

    @precondition(lambda self: self.job_ids)
    @rule(index=_INDEX)
    def pause_or_resume(self, index: int) -> None:
        job_id = self._job(index)
        state = Job.objects.get(pk=job_id).state
        if state == JobState.PAUSED:
            assert actions.resume_job(job_id, self.actor).state in ACTIVE_JOB_STATES
            queued = Task.objects.filter(job_id=job_id, state=TaskState.QUEUED).first()
            if queued is not None:
                assert actions.explain_task(queued.pk) is not None
            return
        try:
            job = actions.pause_job(job_id, self.actor)
        except InvalidTransition:
            assert state not in ACTIVE_JOB_STATES, f"pause of {state} job {job_id} was refused"
            return
        assert state in ACTIVE_JOB_STATES, f"pause of {state} job {job_id} was accepted"
        assert job.state == JobState.PAUSED
        with pytest.raises(InvalidTransition):
            actions.pause_job(job_id, self.actor)

    # -- invariants

    @invariant()
    def queue_invariants(self) -> None:
        assert_queue_invariants()


def _report(kind: str, task_id: int, attempt: int, message_id: str, retryable: bool = True) -> Report:
    return Report(
        kind=kind,
        task_id=task_id,
        attempt=attempt,
        message_id=message_id,
        progress={"step": message_id} if kind == "progress" else None,
        result={"ok": message_id} if kind == "succeeded" else None,
        error={"code": "boom", "message": "failed"} if kind == "failed" else None,
        retryable=retryable,
        reason="busy" if kind == "rejected" else "",
    )


def _snapshot(task: Task) -> dict[str, Any]:
    fields = ("state", "attempt", "agent_id", "lease_expires_at", "cancel_requested_at", "progress", "result", "error")
    return {name: getattr(task, name) for name in fields}


# Shrinking a failure replays many sequences against the database and may take minutes: let it finish.
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_queue_invariants_hold_under_random_operations() -> None:
    max_examples, steps = PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "default"), PROFILES["default"])
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


# --- Examples the state machine found, kept as plain tests ----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("limit", [{"max_in_flight": 1}, {"rate_per_minute": 1}], ids=["max_in_flight", "rate"])
def test_claim_keeps_the_rollout_limit_of_a_job_it_reaches_in_a_later_round(
    make_agent, spec, operator, frozen_clock, limit
):
    """The first job's second task is trimmed, so the claim looks further; it must still count the second job."""
    make_agent("a1", max_concurrency=3)
    first, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=2, **limit), operator)
    second, _ = actions.submit_job(spec(mode=JobMode.ANY, task_count=2, **limit), operator)

    claimed = actions.claim_tasks("a1", 3)

    assert Counter(assignment.job_id for assignment in claimed) == {first.pk: 1, second.pk: 1}
    assert_queue_invariants()
