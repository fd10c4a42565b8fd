"""``{% fleet_dashboard as dash %}``: the admin index's numbers, links and chart, for ``templates/admin/index.html``.

A template tag rather than a custom ``AdminSite``: the dashboard needs no change to the
site every app registers with, and the page keeps Django's own index view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django import template
from django.urls import reverse

from aegis_site.core.models import AuditEvent
from ops.dashboard import Dashboard, build
from ops.dashboard.chart import HEIGHT, WIDTH, Bar, bars
from ops.dashboard.links import audit_object_url, optional_url

register = template.Library()


@dataclass(frozen=True)
class AuditRow:
    event: AuditEvent
    url: str | None


@dataclass(frozen=True)
class DashboardPage:
    data: Dashboard
    bars: list[Bar]
    audit: list[AuditRow]
    chart_width: int = WIDTH
    chart_height: int = HEIGHT
    urls: dict[str, str | None] = field(default_factory=dict)


def page_urls() -> dict[str, str | None]:
    agents = optional_url("admin:registry_agent_changelist")
    tasks = optional_url("admin:tasks_task_changelist")
    jobs = optional_url("admin:tasks_job_changelist")
    return {
        "agents": agents,
        "online": f"{agents}?connectivity__exact=online" if agents else None,
        "offline": f"{agents}?connectivity__exact=offline" if agents else None,
        "draining": f"{agents}?admin_state__exact=draining" if agents else None,
        "disabled": f"{agents}?admin_state__exact=disabled" if agents else None,
        "queued": f"{tasks}?state__exact=queued" if tasks else None,
        "assigned": f"{tasks}?state__exact=assigned" if tasks else None,
        "running": f"{tasks}?state__exact=running" if tasks else None,
        # Failed as the dashboard counts it: failed and timed out.
        "failed": f"{tasks}?state__in=failed,timed_out" if tasks else None,
        "jobs": jobs,
        "open_jobs": f"{jobs}?state__exact=running" if jobs else None,
        "audit": optional_url("admin:core_auditevent_changelist"),
        "reconcile": optional_url("admin:tasks_task_reconcile"),
        "health": reverse("healthz-comprehensive") + "?format=json",
    }


@register.simple_tag(takes_context=True)
def fleet_dashboard(context: template.Context) -> DashboardPage:
    """Jobs and audit rows only for a viewer with their view permissions (they are not read otherwise)."""
    user = context["request"].user
    data = build(with_jobs=user.has_perm("tasks.view_job"), with_audit=user.has_perm("core.view_auditevent"))
    return DashboardPage(
        data=data,
        bars=bars(data.throughput),
        audit=[AuditRow(event, audit_object_url(event)) for event in data.audit or []],
        urls=page_urls(),
    )


@register.filter
def job_url(job_id: int) -> str | None:
    return optional_url("admin:tasks_job_change", job_id)


@register.filter
def age(seconds: float | None) -> str:
    """``42s``, ``7 min``, ``3 h 5 min``, ``2 d 4 h``: short enough for a tile."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if whole < 3600:
        return f"{minutes} min"
    if whole < 86400:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


@register.filter
def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"
