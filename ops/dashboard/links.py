"""Admin addresses the dashboard links to. Views other modules add are linked only once they exist."""

from __future__ import annotations

from django.urls import NoReverseMatch, reverse

from aegis_site.core.models import AuditEvent

OBJECT_VIEWS = {
    "agent": "admin:registry_agent_change",
    "job": "admin:tasks_job_change",
    "task": "admin:tasks_task_change",
}


def optional_url(name: str, *args: object) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def audit_object_url(event: AuditEvent) -> str | None:
    """The changed object's admin page (no query: the URL is built from the audit row alone)."""
    view = OBJECT_VIEWS.get(event.object_type)
    return optional_url(view, event.object_id) if view else None
