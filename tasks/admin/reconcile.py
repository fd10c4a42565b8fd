"""The reconciliation page: tasks whose state contradicts reality, each with one-click fixes.

Each group is read with the partial index on held leases, at most ``SHOWN`` rows,
and counted up to ``COUNT_CAP``: the page stays cheap however far behind the fleet
is. Fixes are POSTs that need the operate permission and call the actions (which
write the audit rows): end the attempt now (what lease expiry would do; the task is
queued again while attempts are left) or force cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from aegis_site.core import clock
from aegis_site.core.adminkit import actor_of, run_for_each
from tasks import actions
from tasks.engine.stuck import GROUPS, Group
from tasks.models import Task

if TYPE_CHECKING:
    from tasks.admin.tasks import TaskAdmin

SHOWN = 100
COUNT_CAP = 1000
FIXES_PER_POST = SHOWN


@dataclass(frozen=True)
class Listed:
    group: Group
    tasks: list[Task]
    total: int  # capped at COUNT_CAP + 1

    @property
    def more(self) -> int:
        return max(self.total - len(self.tasks), 0)

    @property
    def capped(self) -> bool:
        return self.total > COUNT_CAP

    @property
    def more_label(self) -> str:
        return f"more than {COUNT_CAP - len(self.tasks):,}" if self.capped else f"{self.more:,}"


def listed(group: Group) -> Listed:
    now = clock.now()
    rows = list(
        group.tasks(now)
        .select_related("agent")
        .only(
            "id",
            "job_id",
            "kind",
            "state",
            "attempt",
            "max_attempts",
            "lease_expires_at",
            "assigned_at",
            "cancel_requested_at",
            "agent__id",
            "agent__connectivity",
            "agent__last_seen_at",
        )[:SHOWN]
    )
    total = len(rows) if len(rows) < SHOWN else group.tasks(now)[: COUNT_CAP + 1].count()
    return Listed(group, rows, total)


def page(model_admin: TaskAdmin, request: HttpRequest) -> TemplateResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Reconciliation",
        "opts": model_admin.opts,
        "groups": [listed(group) for group in GROUPS],
        "now": clock.now(),
        "count_cap": COUNT_CAP,
        "can_operate": model_admin.has_operate_permission(request),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/tasks/reconcile.html", context)


def parse(pair: str) -> tuple[int, int]:
    """``"<task id>:<attempt>"`` as the page posts it; ValueError for anything else (run_for_each reports it)."""
    task_id, _, attempt = pair.partition(":")
    return int(task_id), int(attempt)


def fix(model_admin: TaskAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_operate_permission(request):
        raise PermissionDenied
    actor = actor_of(request)
    fixes: dict[str, tuple[Callable[[str], object], str]] = {
        "end_attempt": (
            lambda pair: actions.end_held_attempt(*parse(pair), actor),
            "{count} attempt(s) ended; tasks with attempts left are queued again.",
        ),
        "cancel": (
            lambda pair: actions.cancel_task(parse(pair)[0], actor, force=True),
            "{count} task(s) canceled.",
        ),
    }
    chosen = fixes.get(request.POST.get("fix", ""))
    pairs = request.POST.getlist("task")[:FIXES_PER_POST]
    if chosen is None or not pairs:
        model_admin.message_user(request, "No fix or no task chosen.", messages.ERROR)
    else:
        action, done = chosen
        run_for_each(model_admin, request, pairs, action, done)
    return HttpResponseRedirect(reverse("admin:tasks_task_reconcile"))
