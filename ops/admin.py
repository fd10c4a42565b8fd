"""The audit log in the admin: read-only, newest first, filters that use the table's indexes.

Object links are built from ``object_type`` and ``object_id`` alone, so a page
costs no query per row; filters are typed or a fixed set, never a list of the
values in the table (that would be a scan of the whole log).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin import ShowFacets
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from aegis_site.core.adminkit import InputFilter, ReadOnlyAdmin
from aegis_site.core.models import AuditEvent

# Object types with an admin page: the link target of each.
OBJECT_PAGES = {
    "agent": "admin:registry_agent_change",
    "job": "admin:tasks_job_change",
    "task": "admin:tasks_task_change",
}
OBJECT_TYPES = ("agent", "job", "task", "enrolment_token", "api_token")
SHORT_DATA = 80


def object_link(event: AuditEvent) -> SafeString | str:
    label = f"{event.object_type} {event.object_id}"
    page = OBJECT_PAGES.get(event.object_type)
    if page is None:
        return label
    try:
        url = reverse(page, args=[event.object_id])
    except NoReverseMatch:  # an id the page's URL cannot hold (never written by the actions)
        return label
    return format_html('<a href="{}">{}</a>', url, label)


class ActionFilter(InputFilter):
    title = "action (e.g. task.cancel)"
    parameter_name = "action"
    lookup = "action"


class ActorFilter(InputFilter):
    title = "actor (username, agent:<id>, system:<role>)"
    parameter_name = "actor"
    lookup = "actor_label"


class ObjectTypeFilter(admin.SimpleListFilter):
    """The fixed set of object types the actions write (a DISTINCT over the log would read all of it)."""

    title = "object type"
    parameter_name = "object_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name.replace("_", " ")) for name in OBJECT_TYPES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        value = self.value()
        return queryset.filter(object_type=value) if value else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log is append-only: nobody adds, edits or deletes it from the admin."""

    list_display = ("id", "time", "actor_label", "action", "object_column", "short_data")
    list_display_links = ("id", "time")
    list_filter = (ActionFilter, ObjectTypeFilter, ActorFilter)
    list_select_related = False
    sortable_by = ("id",)
    show_facets = ShowFacets.NEVER
    search_fields = ("object_id",)  # the lookup is get_search_results': exact, index-backed
    search_help_text = "Object id (a task or job number, an agent id)."
    actions = None
    fields = ("created_at", "actor_label", "actor", "action", "object_column", "data_json")
    readonly_fields = fields

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[AuditEvent], search_term: str) -> Any:
        """Exact object id over the known object types: ``audit_object_idx`` (object_type, object_id) serves it.

        Django's ``=object_id`` compares ``UPPER(object_id)`` and reads the whole log.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(object_type__in=OBJECT_TYPES, object_id=term), False

    @admin.display(description="time", ordering="id")
    def time(self, event: AuditEvent) -> str:
        return date_format(localtime(event.created_at), "Y-m-d H:i:s")

    @admin.display(description="object")
    def object_column(self, event: AuditEvent) -> SafeString | str:
        return object_link(event)

    @admin.display(description="data")
    def short_data(self, event: AuditEvent) -> str:
        text = json.dumps(event.data, ensure_ascii=False, default=str) if event.data else ""
        return text if len(text) <= SHORT_DATA else text[: SHORT_DATA - 1] + "…"

    @admin.display(description="data")
    def data_json(self, event: AuditEvent) -> SafeString:
        return format_html("<pre id='audit-data'>{}</pre>", json.dumps(event.data, indent=2, ensure_ascii=False))
