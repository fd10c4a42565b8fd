"""What a job's page shows beyond its columns: tasks per state, rollout state, failures by error, first tasks.

A fixed number of queries whatever the job's size, each narrowed by the ``(job, state)``
index: one GROUP BY for the counts, one for the failures, one page of tasks and one for
their attempt reasons. The words (state labels, "3 failed (3 timed out)") are ``tasks.outcomes``'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, F, Max, Window
from django.db.models.fields.json import KT
from django.db.models.functions import RowNumber
from django.urls import reverse

from aegis_site.core import clock
from tasks import outcomes
from tasks.admin.job_display import progress_bar
from tasks.admin.task_display import attempt_html, attempt_reasons, duration_text, outcome_summary
from tasks.engine.claim import assigned_in_window
from tasks.engine.jobs import exceeds_failure_threshold
from tasks.models import HELD_STATES, OPEN_JOB_STATES, Job, JobState, Task, TaskLogChunk, TaskState

TASKS_SHOWN = 50
FAILURE_GROUPS_SHOWN = 20
TAIL_LINES = 10  # the last lines of output shown under each failure group
TAIL_CHUNKS = 4  # read from the task's last chunks (at most 16 KiB each)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
FAILED_STATES = (TaskState.FAILED, TaskState.TIMED_OUT)


def task_list_url(**params: Any) -> str:
    """The task changelist filtered by the task admin's own filters (``job``, ``state__exact``) and lookups."""
    return f"{reverse('admin:tasks_task_changelist')}?{urlencode(params)}"


def counts_by_state(job_id: int) -> dict[str, int]:
    counts = dict.fromkeys(TaskState.values, 0)
    rows = Task.objects.filter(job_id=job_id).order_by().values_list("state").annotate(n=Count("id"))
    for state, number in rows:
        counts[state] = number
    return counts


@dataclass(frozen=True)
class FailureGroup:
    state: str
    code: str | None
    message: str | None
    count: int
    url: str
    example_task_id: int | None = None  # the group's newest task, whose output's last lines are shown
    last_lines: str = ""

    @property
    def label(self) -> str:
        return outcomes.label(self.state)


@dataclass(frozen=True)
class StateCount:
    """One cell of the counts row: the state's label, its tasks, the filtered task list."""

    state: str
    count: int
    url: str
    part_of: str = ""  # "failed": the job's failed count includes this column

    @property
    def label(self) -> str:
        return outcomes.label(self.state)

    @property
    def sub_label(self) -> str:
        """Under the "failed" heading: "error" (the agent reported a failure) and "timed out"."""
        return "error" if self.state == TaskState.FAILED else self.label


def count_cells(job_id: int, counts: dict[str, int]) -> list[StateCount]:
    cells = []
    for state in TaskState.values:
        part_of = "failed" if state in FAILED_STATES else ""
        cells.append(StateCount(state, counts.get(state, 0), task_list_url(job=job_id, state__exact=state), part_of))
    return cells


def failures_by_error(job_id: int) -> list[FailureGroup]:
    """The job's failed and timed-out tasks grouped by error code and message, the largest groups first,
    each with the last lines its newest task printed (its final attempt's output)."""
    rows = list(
        Task.objects.filter(job_id=job_id, state__in=FAILED_STATES)
        .order_by()
        .annotate(code=KT("error__code"), message=KT("error__message"))
        .values_list("state", "code", "message")
        .annotate(n=Count("id"), newest=Max("id"))
        .order_by("-n", "state", "code")[:FAILURE_GROUPS_SHOWN]
    )
    tails = output_tails([newest for *_, newest in rows])
    groups = []
    for state, code, message, count, newest in rows:
        params: dict[str, Any] = {"job": job_id, "state__exact": state}
        if code:
            params["error__code"] = code
        groups.append(FailureGroup(state, code, message, count, task_list_url(**params), newest, tails.get(newest, "")))
    return groups


def output_tails(task_ids: list[int]) -> dict[int, str]:
    """The last ``TAIL_LINES`` lines of each task's output (its current attempt, every stream), in one query.

    Read from the last ``TAIL_CHUNKS`` chunks of each; ANSI escapes are taken out, undecodable
    bytes shown as U+FFFD. The page escapes the text like any other.
    """
    if not task_ids:
        return {}
    newest_first = Window(RowNumber(), partition_by=[F("task_id")], order_by=F("seq").desc())
    rows = (
        TaskLogChunk.objects.filter(task_id__in=task_ids, attempt=F("task__attempt"))
        .annotate(rank=newest_first)
        .filter(rank__lte=TAIL_CHUNKS)
        .order_by("task_id", "seq")
        .values_list("task_id", "data")
    )
    joined: dict[int, bytes] = {}
    for task_id, data in rows:
        joined[task_id] = joined.get(task_id, b"") + bytes(data)
    return {task_id: tail_text(data) for task_id, data in joined.items()}


def tail_text(data: bytes) -> str:
    text = ANSI_ESCAPE.sub("", data.decode("utf-8", errors="replace"))
    return "\n".join(text.rstrip("\n").splitlines()[-TAIL_LINES:])


@dataclass(frozen=True)
class Rollout:
    """How far the rollout's limits hold the job back right now."""

    paused: bool
    in_flight: int
    in_flight_limit: int | None
    rate_per_minute: int | None
    assigned_this_minute: int
    rate_window_start: datetime | None
    abort_failure_ratio: float | None
    abort_min_finished: int
    failure_ratio: float | None  # failed / (succeeded + failed); None before any finished
    abort_armed: bool  # enough tasks finished for the abort rule to apply
    over_threshold: bool

    @property
    def abort_percent(self) -> str:
        return _percent(self.abort_failure_ratio)

    @property
    def failure_percent(self) -> str:
        return _percent(self.failure_ratio)

    @property
    def in_flight_percent(self) -> int:
        if not self.in_flight_limit:
            return 0
        return min(100, round(100 * self.in_flight / self.in_flight_limit))


def _percent(ratio: float | None) -> str:
    return "" if ratio is None else f"{100 * ratio:.3g}%"


def rollout_of(job: Job, counts: dict[str, int], now: datetime) -> Rollout:
    finished = job.tasks_succeeded + job.tasks_failed
    return Rollout(
        paused=job.state == JobState.PAUSED,
        in_flight=sum(counts[state] for state in HELD_STATES),
        in_flight_limit=job.in_flight_limit(),
        rate_per_minute=job.rate_per_minute,
        assigned_this_minute=assigned_in_window(job, now),
        rate_window_start=job.rate_window_start,
        abort_failure_ratio=job.abort_failure_ratio,
        abort_min_finished=job.abort_min_finished,
        failure_ratio=job.tasks_failed / finished if finished else None,
        abort_armed=finished >= max(job.abort_min_finished, 1),
        over_threshold=exceeds_failure_threshold(job),
    )


@dataclass(frozen=True)
class TaskRow:
    task: Task
    duration: str
    outcome: Any
    attempt: Any


def first_tasks(job_id: int, now: datetime) -> list[TaskRow]:
    tasks = list(
        Task.objects.filter(job_id=job_id)
        .only(
            "id",
            "job",
            "agent",
            "state",
            "attempt",
            "max_attempts",
            "not_before",
            "cancel_requested_at",
            "result",
            "error",
            "created_at",
            "assigned_at",
            "started_at",
            "finished_at",
            "updated_at",
        )
        .order_by("id")[:TASKS_SHOWN]
    )
    reasons = attempt_reasons(tasks)
    return [
        TaskRow(task, duration_text(task, now), outcome_summary(task), attempt_html(task, reasons.get(task.pk)))
        for task in tasks
    ]


def detail_context(job: Job) -> dict[str, Any]:
    counts = counts_by_state(job.pk)
    now = clock.now()
    outcome = outcomes.job_outcome(job, counts.get(TaskState.TIMED_OUT, 0))
    return {
        "outcome": outcome,
        "state_label": outcomes.label(job.state),
        "progress_bar": progress_bar(job, wide=True, timed_out=outcome.timed_out),
        "can_pause": job.state in (JobState.SCHEDULED, JobState.RUNNING),
        "can_resume": job.state == JobState.PAUSED,
        "can_cancel": job.state in OPEN_JOB_STATES,
        "can_retry": bool(job.tasks_failed) and job.state != JobState.CANCELED,
        "counts": count_cells(job.pk, counts),
        "rollout": rollout_of(job, counts, now),
        "failures": failures_by_error(job.pk),
        "tasks": first_tasks(job.pk, now),
        "tasks_shown": TASKS_SHOWN,
        "all_tasks_url": task_list_url(job=job.pk),
    }
