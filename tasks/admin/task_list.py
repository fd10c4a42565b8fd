"""Columns and filters of the task list: links by id and typed filters, so a page costs no query per row.

Every column reads the task row alone (job and agent links use the foreign key
values), and no filter lists values from the table: a list of 100,000 agents or every
kind ever submitted would be a scan before the page shows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil
from django.utils.timezone import localtime

from aegis_site.core import clock
from aegis_site.core.adminkit import InputFilter, whole_number
from tasks import outcomes
from tasks.admin.task_display import attempt_html, attempt_reasons, duration_text, outcome_summary
from tasks.models import HELD_STATES, Task, TaskState


def relative(moment: datetime, now: datetime) -> str:
    """'3 minutes ago' or 'in 3 minutes', to the first unit: an operator reads ages, not timestamps."""
    if abs(moment - now) < timedelta(minutes=1):
        return "just now" if moment <= now else "in under a minute"
    if moment <= now:
        return f"{timesince(moment, now, depth=1)} ago"
    return f"in {timeuntil(moment, now, depth=1)}"


def job_link(job_id: int) -> SafeString:
    return format_html('<a href="{}">job {}</a>', reverse("admin:tasks_job_change", args=[job_id]), job_id)


def agent_link(agent_id: str | None) -> SafeString | str:
    if not agent_id:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:registry_agent_change", args=[agent_id]), agent_id)


def exact(moment: datetime) -> str:
    """The admin's one time format, with seconds (``DATETIME_FORMAT``, aegis_site/formats)."""
    return date_format(localtime(moment), "DATETIME_FORMAT")


def state_badge(task: Task) -> SafeString:
    pending = " (cancel pending)" if task.cancel_requested_at and task.state in HELD_STATES else ""
    return format_html("{}{}", outcomes.badge(task.state, "task"), pending)


class TaskChangeList(ChangeList):
    """Adds each listed task's attempt reason, read for the whole page in one query (no query per row)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        tasks = list(self.result_list)
        reasons = attempt_reasons(tasks)
        for task in tasks:
            task.attempt_reason = reasons.get(task.pk)
        self.result_list = tasks


@admin.display(description="job", ordering="job_id")
def job_column(task: Task) -> SafeString:
    return job_link(task.job_id)


@admin.display(description="state")
def state_column(task: Task) -> SafeString:
    return state_badge(task)


@admin.display(description="agent")
def agent_column(task: Task) -> SafeString | str:
    return agent_link(task.agent_id)


@admin.display(description="attempt")
def attempt_column(task: Task) -> SafeString:
    reason = getattr(task, "attempt_reason", None)
    if reason is None:  # outside the changelist (no page-wide query): ask for this task alone
        reason = attempt_reasons([task]).get(task.pk)
    return attempt_html(task, reason)


@admin.display(description="age", ordering="id")
def age_column(task: Task) -> SafeString:
    # created_at is written by the database clock (auto_now_add), not the engine's.
    return format_html('<time title="{}">{}</time>', exact(task.created_at), relative(task.created_at, timezone.now()))


@admin.display(description="duration")
def duration_column(task: Task) -> str:
    return duration_text(task, clock.now())  # started and finished times are the engine clock's


@admin.display(description="result / error")
def outcome_column(task: Task) -> SafeString | str:
    return outcome_summary(task)


@admin.display(description="waits until / lease")
def timing_column(task: Task) -> str:
    """What the task waits for: its not-before time while queued, its lease while held."""
    now = clock.now()
    if task.state == TaskState.QUEUED:
        return f"not before {relative(task.not_before, now)}" if task.not_before > now else "ready"
    if task.state in HELD_STATES and task.lease_expires_at:
        verb = "lease expired" if task.lease_expires_at <= now else "lease ends"
        return f"{verb} {relative(task.lease_expires_at, now)}"
    return "-"


class KindFilter(InputFilter):
    title = "kind"
    parameter_name = "kind"
    lookup = "kind"


class AgentFilter(InputFilter):
    title = "agent id"
    parameter_name = "agent"
    lookup = "agent_id"


class JobFilter(InputFilter):
    title = "job id"
    parameter_name = "job"
    lookup = "job_id"

    def clean(self, value: str) -> object:
        number = whole_number(value)
        if number is None:
            raise ValueError(f"not a job id: {value[:40]!r}")
        return number


class AttemptFilter(admin.SimpleListFilter):
    title = "attempt"
    parameter_name = "attempt"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("1", "1"), ("2", "2"), ("3+", "3 or more")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        if value == "3+":
            return queryset.filter(attempt__gte=3)
        if value in ("1", "2"):
            return queryset.filter(attempt=int(value))
        return queryset


AGES = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


class AgeFilter(admin.SimpleListFilter):
    title = "created"
    parameter_name = "age"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("5m", "last 5 minutes"), ("1h", "last hour"), ("1d", "last day"), ("older", "more than a day ago")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        now = timezone.now()
        if value in AGES:
            return queryset.filter(created_at__gte=now - AGES[value])
        if value == "older":
            return queryset.filter(created_at__lt=now - AGES["1d"])
        return queryset
