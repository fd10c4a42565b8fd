"""One vocabulary for job and task outcomes: every page, the dashboard and the API docs read it from here.

The words are the labels of the model choices (``JobState``, ``TaskState``: "timed out", never
``timed_out`` or Django's "Timed Out"); this module adds the badge, the colour family of a state,
and how a job's failed count reads: a job counts failed and timed-out tasks together as failed
(``Job.tasks_failed``), so wherever that count shows, the timed-out part shows with it:
"3 failed (3 timed out)". A state this code does not know yet (a newer release's) shows by its
value, with spaces, in grey.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tasks.models import Job, JobState, Task, TaskState

LABELS: dict[str, str] = {**dict(JobState.choices), **dict(TaskState.choices)}

# The colour family of each state (the badge CSS of the job and task templates keys on the state itself;
# this is what the dashboard and tests read). Unknown states are "neutral".
TONES: dict[str, str] = {
    "scheduled": "waiting",
    "queued": "waiting",
    "assigned": "active",
    "running": "active",
    "paused": "paused",
    "succeeded": "good",
    "failed": "bad",
    "timed_out": "bad",
    "aborted": "bad",
    "canceled": "neutral",
    "empty": "neutral",
}

FAILED_TASK_STATES = (TaskState.FAILED, TaskState.TIMED_OUT)


def label(state: str) -> str:
    """What an operator reads for a job or task state: the choice's label."""
    return LABELS.get(state) or state.replace("_", " ")


def tone(state: str) -> str:
    return TONES.get(state, "neutral")


def badge(state: str, family: str = "job", element_id: str = "") -> SafeString:
    """A state badge: ``job-badge job-badge-<state>`` (job pages) or ``task-badge task-<state>`` (task pages)."""
    classes = f"job-badge job-badge-{state}" if family == "job" else f"task-badge task-{state}"
    if element_id:
        return format_html('<span id="{}" class="{}">{}</span>', element_id, classes, label(state))
    return format_html('<span class="{}">{}</span>', classes, label(state))


def failed_text(failed: int, timed_out: int | None) -> str:
    """'3 failed (3 timed out)': ``failed`` counts timed-out tasks too, as the job's counter does."""
    if timed_out:
        return f"{failed} failed ({timed_out} timed out)"
    return f"{failed} failed"


@dataclass(frozen=True)
class JobOutcome:
    """A job's finished tasks in words, from its counters plus the number of its timed-out tasks."""

    total: int
    succeeded: int
    failed: int  # failed + timed out, as Job.tasks_failed
    timed_out: int | None  # None: not counted (the text then leaves the split out)
    canceled: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled

    @property
    def failed_text(self) -> str:
        return failed_text(self.failed, self.timed_out)

    @property
    def summary(self) -> str:
        """'3 of 3 tasks finished: 0 succeeded, 3 failed (3 timed out), 0 canceled'."""
        return (
            f"{self.finished} of {self.total} tasks finished: "
            f"{self.succeeded} succeeded, {self.failed_text}, {self.canceled} canceled"
        )

    @property
    def parts(self) -> str:
        """The bar's title: '0 succeeded, 3 failed (3 timed out), 0 canceled, 0 not finished of 3'."""
        open_tasks = max(self.total - self.finished, 0)
        return (
            f"{self.succeeded} succeeded, {self.failed_text}, {self.canceled} canceled, "
            f"{open_tasks} not finished of {self.total}"
        )


def job_outcome(job: Job, timed_out: int | None = None) -> JobOutcome:
    return JobOutcome(
        total=job.tasks_total,
        succeeded=job.tasks_succeeded,
        failed=job.tasks_failed,
        timed_out=timed_out,
        canceled=job.tasks_canceled,
    )


def timed_out_counts(job_ids: list[int]) -> dict[int, int]:
    """Timed-out tasks per job, for these jobs only: one GROUP BY on the ``(job, state)`` index."""
    if not job_ids:
        return {}
    rows = (
        Task.objects.filter(job_id__in=job_ids, state=TaskState.TIMED_OUT)
        .order_by()
        .values("job_id")
        .annotate(n=Count("id"))
        .values_list("job_id", "n")[: len(job_ids)]  # one row per job at most: the LIMIT states the bound
    )
    return dict(rows)
