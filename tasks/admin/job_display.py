"""How a job looks in the admin: a state badge and a progress bar from the job's counters (no task is counted).

Plain HTML with classes the job templates style (``admin/tasks/job/styles.html``), no script, no CDN.
The words come from ``tasks.outcomes``: the bar's "failed" includes timed-out tasks and says how many.
"""

from __future__ import annotations

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks import outcomes
from tasks.models import Job


def state_badge(state: str) -> SafeString:
    return outcomes.badge(state, "job")


def _percent(part: int, total: int) -> float:
    return round(100 * part / total, 2) if total else 0.0


def progress_bar(job: Job, wide: bool = False, timed_out: int | None = None) -> SafeString:
    """Succeeded, failed (with timed out), canceled and still open, as widths of one bar."""
    total = job.tasks_total
    open_tasks = max(total - job.tasks_finished, 0)
    parts = [
        ("succeeded", job.tasks_succeeded),
        ("failed", job.tasks_failed),
        ("canceled", job.tasks_canceled),
        ("open", open_tasks),
    ]
    title = outcomes.job_outcome(job, timed_out).parts
    segments = format_html_join(
        "",
        '<span class="job-bar-{}" style="width: {}%"></span>',
        ((name, f"{_percent(count, total):.2f}") for name, count in parts if count),
    )
    return format_html(
        '<span class="job-bar{}" title="{}" role="img" aria-label="{}">{}</span>',
        " wide" if wide else "",
        title,
        title,
        segments,
    )
