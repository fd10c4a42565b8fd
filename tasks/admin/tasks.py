"""Tasks and their history in the admin: every change goes through ``tasks.actions``.

The list reads task rows alone (no join, no query per row) in id order; the detail
page adds the explanation and the history; cancel and retry run the same actions
the API runs, from the list (bulk) or the detail page's buttons (POST, CSRF, the
operate permission). The reconciliation view lives in ``tasks.admin.reconcile``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import ShowFacets
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from aegis_site.core.adminkit import ReadOnlyAdmin, actor_of, run_for_each, whole_number
from tasks import actions, outcomes
from tasks.admin import reconcile, task_detail
from tasks.admin.task_list import (
    AgeFilter,
    AgentFilter,
    AttemptFilter,
    JobFilter,
    KindFilter,
    TaskChangeList,
    age_column,
    agent_column,
    agent_link,
    attempt_column,
    duration_column,
    job_column,
    job_link,
    outcome_column,
    state_column,
    timing_column,
)
from tasks.models import Task, TaskEvent

BULK_LIMIT = 1000  # one action call per task: "select all" over millions of rows must not start


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    change_list_template = "admin/tasks/task/change_list.html"
    change_form_template = "admin/tasks/task/change_form.html"
    list_display = (
        "id",
        job_column,
        "kind",
        state_column,
        agent_column,
        attempt_column,
        age_column,
        duration_column,
        outcome_column,
        timing_column,
    )
    list_display_links = ("id",)
    list_filter = ("state", KindFilter, AgentFilter, JobFilter, AttemptFilter, AgeFilter)
    list_select_related = False
    sortable_by = ("id",)  # any other order sorts millions of rows before the LIMIT
    show_facets = ShowFacets.NEVER
    search_fields = ("=id",)
    search_help_text = "Task id."
    actions = ["cancel_selected", "force_cancel_selected", "retry_selected"]
    fields = (
        "job_ref",
        "agent_ref",
        "kind",
        "pinned",
        "priority",
        "attempt",
        "max_attempts",
        "not_before",
        "lease_expires_at",
        "cancel_requested_at",
        "created_at",
        "assigned_at",
        "started_at",
        "finished_at",
        "updated_at",
    )
    readonly_fields = fields

    @admin.display(description="job")
    def job_ref(self, task: Task) -> str:
        return job_link(task.job_id)

    @admin.display(description="agent")
    def agent_ref(self, task: Task) -> str:
        return agent_link(task.agent_id)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[TaskChangeList]:
        return TaskChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        task_id = whole_number(term)
        if task_id is None:
            return queryset.none(), False
        return queryset.filter(pk=task_id), False

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Task | None:
        task = super().get_object(request, object_id, from_field)
        if task is not None:
            task = Task.objects.select_related("job").get(pk=task.pk)
        return task

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Task | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(task_detail.context(obj))
            context["task"] = obj
            context["can_operate"] = self.has_operate_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        own = [
            path("reconcile/", view(self.reconcile_view), name="tasks_task_reconcile"),
            path("reconcile/fix/", view(self.reconcile_fix_view), name="tasks_task_reconcile_fix"),
            path("<int:task_id>/operate/", view(self.operate_view), name="tasks_task_operate"),
        ]
        return own + super().get_urls()

    # --- the detail page's buttons ------------------------------------------------------

    @method_decorator(require_POST)
    def operate_view(self, request: HttpRequest, task_id: int) -> HttpResponse:
        return _operate(self, request, task_id)

    # --- bulk actions on the list -------------------------------------------------------

    @admin.action(description="Cancel selected tasks (running ones: ask their agents)", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        actor = actor_of(request)
        self._for_each(request, queryset, lambda pk: actions.cancel_task(pk, actor), "{count} task(s) canceled")

    @admin.action(description="Force cancel selected tasks (end them now)", permissions=["operate"])
    def force_cancel_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        actor = actor_of(request)
        self._for_each(
            request, queryset, lambda pk: actions.cancel_task(pk, actor, force=True), "{count} task(s) force canceled"
        )

    @admin.action(description="Retry selected tasks (failed, timed out or canceled)", permissions=["operate"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        actor = actor_of(request)
        self._for_each(request, queryset, lambda pk: actions.retry_task(pk, actor), "{count} task(s) queued again")

    def _for_each(
        self, request: HttpRequest, queryset: QuerySet[Task], action: Callable[[int], object], done: str
    ) -> None:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: BULK_LIMIT + 1])
        if len(ids) > BULK_LIMIT:
            self.message_user(
                request, f"More than {BULK_LIMIT} tasks selected; narrow the filters first.", messages.ERROR
            )
            return
        run_for_each(self, request, ids, action, done)

    # --- reconciliation -----------------------------------------------------------------

    def reconcile_view(self, request: HttpRequest) -> TemplateResponse:
        return reconcile.page(self, request)

    @method_decorator(require_POST)
    def reconcile_fix_view(self, request: HttpRequest) -> HttpResponse:
        return reconcile.fix(self, request)


def _operate(model_admin: TaskAdmin, request: HttpRequest, task_id: int) -> HttpResponse:
    """Cancel, force cancel or retry one task; the button pressed names the action."""
    if not model_admin.has_operate_permission(request):
        raise PermissionDenied
    task = get_object_or_404(Task, pk=task_id)
    actor = actor_of(request)
    reset_backoff = request.POST.get("reset_backoff") == "on"  # retry: delays start again from the base
    choices: dict[str, tuple[Callable[[int], object], str]] = {
        "_cancel": (lambda pk: actions.cancel_task(pk, actor), "Task {pk}: cancel sent."),
        "_force_cancel": (lambda pk: actions.cancel_task(pk, actor, force=True), "Task {pk} force canceled."),
        "_retry": (lambda pk: actions.retry_task(pk, actor, reset_backoff=reset_backoff), "Task {pk} queued again."),
    }
    chosen = next((name for name in choices if name in request.POST), None)
    if chosen is None:
        model_admin.message_user(request, "No action chosen.", messages.ERROR)
    else:
        action, done = choices[chosen]
        run_for_each(model_admin, request, [task.pk], action, done.replace("{pk}", str(task.pk)))
    return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "task_id", "kind", "attempt", "transition", "agent_id", "created_at")
    list_filter = ("kind",)
    show_facets = ShowFacets.NEVER
    search_fields = ("agent_id",)  # the lookup is get_search_results': exact, index-backed
    search_help_text = "A task id, an agent id or a message id (exact)."
    raw_id_fields = ("task",)
    ordering = ("-id",)

    @admin.display(description="transition")
    def transition(self, event: TaskEvent) -> str:
        """'running → timed out', in the state labels (the columns hold the values)."""
        if event.from_state and event.to_state and event.from_state != event.to_state:
            return f"{outcomes.label(event.from_state)} → {outcomes.label(event.to_state)}"
        state = event.to_state or event.from_state
        return outcomes.label(state) if state else "-"

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[TaskEvent], search_term: str) -> Any:
        """Exact matches only: task id (task_events_task_idx), agent id (task_events_agent_idx), message id
        (task_events_message_agent_uniq, one event per agent that used it).

        Django's default would compare ``UPPER(...) LIKE '%term%'`` and read every event (seconds at 6M rows).
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(agent_id=term) | Q(message_id=term)
        task_id = whole_number(term)
        if task_id is not None:
            match |= Q(task_id=task_id)
        return queryset.filter(match), False
