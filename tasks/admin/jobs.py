"""Jobs in the admin: create with a dry run, follow the rollout, control it; changes go through ``tasks.actions``.

Adding a job needs ``tasks.add_job`` and runs the API's own validation (``job_form``);
editing or deleting a job row is never offered: pause, resume, cancel and retry
(``tasks.change_job``, the kit's "operate" permission) are the only ways to change one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.safestring import SafeString

from aegis_site.core.adminkit import InputFilter, ReadOnlyAdmin, actor_of, run_for_each, whole_number
from aegis_site.core.audit import Actor
from tasks import actions, outcomes
from tasks.admin import job_detail, job_views
from tasks.admin.job_display import progress_bar, state_badge
from tasks.models import Job, JobMode


class KindFilter(InputFilter):
    """Typed, not listed: kinds are open-ended. Exact match, on the ``kind`` index."""

    title = "kind"
    parameter_name = "kind"
    lookup = "kind"


class JobChangeList(ChangeList):
    """Counts the timed-out tasks of the page's jobs that failed at all, in one query (``(job, state)`` index)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        jobs = list(self.result_list)
        timed_out = outcomes.timed_out_counts([job.pk for job in jobs if job.tasks_failed])
        for job in jobs:
            job.timed_out = timed_out.get(job.pk, 0)
        self.result_list = jobs


def _pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="job-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "state_badge", "progress", "tasks_total", "created_by", "created_at")
    list_display_links = ("id", "kind")
    list_select_related = ("created_by",)
    list_filter = ("state", "mode", KindFilter)
    search_fields = ("=id", "^kind", "=idempotency_key")  # shows the box; get_search_results does the lookups
    search_help_text = "Job id, the start of its kind, or its idempotency key."
    actions = ("pause_jobs", "resume_jobs", "cancel_jobs", "retry_failed_jobs")
    readonly_fields = (
        "target_summary",
        "payload_pretty",
        "state_badge",
        "progress",
        "backoff",
        "timeouts",
        "in_flight_summary",
        "abort_rule",
    )
    show_facets = admin.ShowFacets.NEVER  # facet counts would COUNT the whole table once per filter choice

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None) -> Any:
        mode_fields = ("task_count",) if obj is not None and obj.mode == JobMode.ANY else ("continuous",)
        policy = ("priority", "max_attempts", "backoff", "timeouts", "not_before", "idempotency_key")
        return [
            # State, progress, failures and tasks come first (the template's form_top, refreshed live);
            # the job's specification follows, its policies folded away.
            ("Job", {"fields": ("kind", "created_by", "created_at")}),
            ("Target", {"fields": ("mode", "target_summary", *mode_fields)}),
            ("Payload", {"fields": ("payload_pretty",)}),
            ("Policy", {"fields": policy, "classes": ("collapse",)}),
            (
                "Rollout policy",
                {"fields": ("in_flight_summary", "rate_per_minute", "abort_rule"), "classes": ("collapse",)},
            ),
        ]

    # --- who may do what ---------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Unlike the other read-only pages, a job can be created here (through ``submit_job``)."""
        return admin.ModelAdmin.has_add_permission(self, request)

    # --- list --------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # Payloads are up to 256 KiB each; only the detail page reads one (one query, one row).
        return super().get_queryset(request).select_related("created_by").defer("payload")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        """Only index-friendly lookups: the id, the start of the kind (as typed), the exact idempotency key.

        The stock search would compare ``UPPER(column)`` and could use no index.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(kind__startswith=term) | Q(idempotency_key=term)
        job_id = whole_number(term)
        if job_id is not None:
            match |= Q(pk=job_id)
        return queryset.filter(match), False

    @admin.display(description="state", ordering="state")
    def state_badge(self, job: Job) -> SafeString:
        return state_badge(job.state)

    @admin.display(description="progress")
    def progress(self, job: Job) -> SafeString:
        """The bar, then '2/3 finished' and the failures split: '3 failed (3 timed out)'."""
        timed_out = getattr(job, "timed_out", None)
        if timed_out is None and job.tasks_failed:  # outside the changelist: this job alone
            timed_out = outcomes.timed_out_counts([job.pk]).get(job.pk, 0)
        outcome = outcomes.job_outcome(job, timed_out)
        failed = (
            format_html(', <span class="job-failed-text">{}</span>', outcome.failed_text) if job.tasks_failed else ""
        )
        return format_html(
            '{} <span class="job-progress-text">{}/{} finished{}</span>',
            progress_bar(job, timed_out=timed_out),
            outcome.finished,
            outcome.total,
            failed,
        )

    # --- detail ------------------------------------------------------------------------

    @admin.display(description="target")
    def target_summary(self, job: Job) -> str:
        parts = []
        if job.target_agent_ids:
            shown = ", ".join(job.target_agent_ids[:20])
            more = f" and {len(job.target_agent_ids) - 20} more" if len(job.target_agent_ids) > 20 else ""
            parts.append(f"agents {shown}{more}")
        for key, wanted in (job.target_labels or {}).items():
            parts.append(
                f"{key} in [{', '.join(map(str, wanted))}]" if isinstance(wanted, list) else f"{key} = {wanted}"
            )
        if job.target_capabilities:
            parts.append(f"capabilities {', '.join(job.target_capabilities)}")
        if parts:
            return "; ".join(parts)
        return "every agent of the fleet (target_all)" if job.target_all else "every agent of the fleet"

    @admin.display(description="payload")
    def payload_pretty(self, job: Job) -> SafeString:
        return _pretty_json(job.payload)

    @admin.display(description="backoff")
    def backoff(self, job: Job) -> str:
        return f"{job.backoff_base_s:g} s doubling, at most {job.backoff_cap_s:g} s"

    @admin.display(description="timeouts")
    def timeouts(self, job: Job) -> str:
        return f"delivery {job.delivery_timeout_s} s, execution {job.execution_timeout_s} s"

    @admin.display(description="max in flight")
    def in_flight_summary(self, job: Job) -> str:
        limits = []
        if job.max_in_flight:
            limits.append(f"{job.max_in_flight} tasks")
        if job.max_in_flight_percent:
            limits.append(f"{job.max_in_flight_percent}% of tasks")
        return " and ".join(limits) or "no limit"

    @admin.display(description="abort rule")
    def abort_rule(self, job: Job) -> str:
        if job.abort_failure_ratio is None:
            return "none"
        return f"abort when more than {job.abort_failure_ratio:.0%} fail, after {job.abort_min_finished} finished"

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Job | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(job_detail.detail_context(obj))
            context["has_operate_permission"] = self.has_operate_permission(request)
            context["can_clone"] = self.has_add_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- create and control ------------------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        return job_views.create_view(self, request)

    def get_urls(self) -> list[URLPattern]:
        controls = [
            path(
                f"<int:object_id>/{name}/",
                self.admin_site.admin_view(job_views.control_view(self, name)),
                name=f"tasks_job_{name.replace('-', '_')}",
            )
            for name in job_views.CONTROLS
        ]
        return controls + super().get_urls()

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Job], control: Callable[[int, Actor], object], done: str
    ) -> None:
        actor = actor_of(request)
        ids = queryset.values_list("pk", flat=True)
        run_for_each(self, request, ids, lambda pk: control(pk, actor), done)

    @admin.action(description="Pause the selected jobs", permissions=["operate"])
    def pause_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._each(request, queryset, actions.pause_job, "Paused {count} jobs.")

    @admin.action(description="Resume the selected jobs", permissions=["operate"])
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._each(request, queryset, actions.resume_job, "Resumed {count} jobs.")

    @admin.action(description="Cancel the selected jobs", permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._each(request, queryset, actions.cancel_job, "Canceled {count} jobs.")

    @admin.action(description="Retry the failed tasks of the selected jobs (backoff kept)", permissions=["operate"])
    def retry_failed_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """The bulk form of a job's "Retry failed…": the same allowance, said in the message; no backoff reset
        (that choice is on each job's confirmation page, which shows what it changes)."""
        self._each(
            request,
            queryset,
            actions.retry_failed,
            "Queued the failed tasks of {count} jobs again. Each task gets its job's max_attempts more attempts, "
            "numbered on from its last one; the backoff goes on growing (a job's 'Retry failed…' page can reset it).",
        )
