"""The registry in the admin: the fleet list, an agent's detail page, credentials.

Nothing here writes a model: operator actions live in ``registry.admin.operations`` and call
``registry.actions``. At fleet scale (100,000 agents) the list stays cheap: a capped count, no
facet counts, filters that take typed values instead of listing them (``registry.admin.filters``),
prefix search, and the running/capacity column filled by one query for the page's rows.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from aegis_site.core.adminkit import ReadOnlyAdmin, actor_of
from aegis_site.core.models import AuditEvent
from registry import actions
from registry.admin import display
from registry.admin.filters import CapabilityFilter, LabelFilter, VersionFilter
from registry.admin.operations import AgentOperationsAdmin
from registry.models import Agent, AgentCredential
from tasks.models import HELD_STATES, Task, TaskEvent


def held_task_counts(agent_ids: list[str]) -> dict[str, int]:
    """Assigned + running tasks per agent, for these agents only (``tasks_agent_state_idx``)."""
    if not agent_ids:
        return {}
    rows = (
        Task.objects.filter(agent_id__in=agent_ids, state__in=HELD_STATES)
        .order_by()
        .values("agent_id")
        .annotate(held=Count("id"))
        .values_list("agent_id", "held")[: len(agent_ids)]  # one row per agent at most: the LIMIT states the bound
    )
    return dict(rows)


class AgentChangeList(ChangeList):
    """Fills ``held_tasks`` on the page's agents with one query, after the page is cut (no aggregate over the table)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        agents = list(self.result_list)
        held = held_task_counts([agent.pk for agent in agents])
        for agent in agents:
            agent.held_tasks = held.get(agent.pk, 0)
        self.result_list = agents


@admin.register(Agent)
class AgentAdmin(AgentOperationsAdmin):
    list_display = (
        "id",
        "name",
        "connectivity_badge",
        "admin_state_badge",
        "last_seen",
        "label_chips",
        "capability_list",
        "version",
        "load",
    )
    list_filter = ("connectivity", "admin_state", VersionFilter, CapabilityFilter, LabelFilter)
    search_fields = ("id", "name")  # the search itself is get_search_results: a prefix match
    search_help_text = "Agent id or name, from its start."
    sortable_by = ("id", "last_seen", "version")
    show_facets = admin.ShowFacets.NEVER  # facet counts scan the whole table
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AgentChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Agent], search_term: str
    ) -> tuple[QuerySet[Agent], bool]:
        """``id LIKE 'x%' OR name LIKE 'x%'``: both served by a B-tree index (ids are lowercase)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(id__startswith=term.lower()) | Q(name__startswith=term)), False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting is an operator action too; delete_model/delete_queryset route it through remove_agent.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        actions.remove_agent(obj.pk, actor_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent_id in queryset.values_list("pk", flat=True):
            actions.remove_agent(agent_id, actor_of(request))

    # --- columns ---------------------------------------------------------------------

    @admin.display(description="connectivity")
    def connectivity_badge(self, agent: Agent) -> SafeString:
        return display.badge(agent.connectivity)

    @admin.display(description="admin state")
    def admin_state_badge(self, agent: Agent) -> SafeString:
        return display.badge(agent.admin_state)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, agent: Agent) -> SafeString:
        return display.last_seen(agent.last_seen_at)

    @admin.display(description="labels")
    def label_chips(self, agent: Agent) -> SafeString:
        return display.label_chips(agent.labels)

    @admin.display(description="capabilities")
    def capability_list(self, agent: Agent) -> SafeString:
        return display.capability_list(agent.capabilities)

    @admin.display(description="running / capacity")
    def load(self, agent: Agent) -> SafeString:
        held = getattr(agent, "held_tasks", None)
        if held is None:  # outside the changelist (no page-wide count): ask for this agent alone
            held = held_task_counts([agent.pk]).get(agent.pk, 0)
        return display.load(held, agent.max_concurrency)

    # --- detail page -----------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        agent = self.get_object(request, unquote(object_id))
        if agent is not None:  # else Django answers (redirect with "does not exist")
            context.update(agent_detail(agent, request.user))
        context["can_operate"] = self.has_operate_permission(request)
        context["can_issue_credentials"] = self.has_issue_credentials_permission(request)
        context["can_revoke_credentials"] = self.has_revoke_credentials_permission(request)
        context["operations"] = self.detail_buttons(agent)
        return super().change_view(request, object_id, form_url, context)


RECENT = 20


def agent_detail(agent: Agent, viewer: Any) -> dict[str, Any]:
    """What the detail page shows besides the agent's fields: a handful of bounded, indexed queries.

    Tasks, credentials and audit rows are read only for a viewer with their view permission
    (``None`` otherwise: the section is left out); the agent's load is a count, shown to all.
    """
    may_see_tasks = viewer.has_perm("tasks.view_task")
    current = (
        list(Task.objects.filter(agent_id=agent.pk, state__in=HELD_STATES).order_by("id")[:100])
        if may_see_tasks
        else []
    )
    held = len(current) if may_see_tasks else held_task_counts([agent.pk]).get(agent.pk, 0)
    credentials = AgentCredential.objects.filter(agent_id=agent.pk).order_by("-created_at", "-id")
    audit = AuditEvent.objects.filter(object_type="agent", object_id=agent.pk).order_by("-id")
    return {
        "connectivity_badge": display.badge(agent.connectivity),
        "admin_state_badge": display.badge(agent.admin_state),
        "last_seen": display.last_seen(agent.last_seen_at),
        "label_chips": display.label_chips(agent.labels),
        "capability_list": display.capability_list(agent.capabilities),
        "load": display.load(held, agent.max_concurrency),
        "current_tasks": current if may_see_tasks else None,
        "recent_events": list(TaskEvent.objects.filter(agent_id=agent.pk).order_by("-id")[:RECENT])
        if may_see_tasks
        else None,
        "credentials": list(credentials[:50]) if viewer.has_perm("registry.view_agentcredential") else None,
        "audit_events": list(audit[:RECENT]) if viewer.has_perm("core.view_auditevent") else None,
    }


@admin.register(AgentCredential)
class AgentCredentialAdmin(ReadOnlyAdmin):
    list_display = ("agent", "kind", "token_prefix", "created_at", "expires_at", "revoked_at")
    list_filter = ("kind",)
    search_fields = ("agent__id",)  # the lookup is get_search_results': exact, index-backed
    search_help_text = "An agent id, a token prefix or a certificate fingerprint (exact)."

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[AgentCredential], search_term: str) -> Any:
        """Exact matches (agent index, unique fingerprint) instead of ``icontains`` over every credential."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(agent_id=term) | Q(token_prefix=term) | Q(cert_fingerprint=term)), False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Credentials go with their agent when it is removed; the admin's delete
        # confirmation checks this permission for every cascaded model.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # ... but a credential alone is never deleted here: it is revoked (an audited action),
        # so that its history stays and the bridge keeps refusing it.
        return {}

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        raise PermissionDenied("credentials are revoked from their agent's page, not deleted")
