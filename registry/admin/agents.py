"""The registry in the admin: the fleet list, an agent's detail page, credentials.

Nothing here writes a model: operator actions live in ``registry.admin.operations`` and call
``registry.actions``. At fleet scale (100,000 agents) the list stays cheap: a capped count, no
facet counts, filters that take typed values instead of listing them (``registry.admin.filters``),
prefix search. What an agent works on (its tasks) is the tasks app's: ``tasks.admin.agents``
extends this admin with it, as Django's docs extend ``UserAdmin`` (the registry imports no task).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.safestring import SafeString

from aegis_site.core.adminkit import ReadOnlyAdmin, actor_of
from aegis_site.core.models import AuditEvent
from registry import actions
from registry.admin import display
from registry.admin.filters import CapabilityFilter, LabelFilter, VersionFilter
from registry.admin.operations import AgentOperationsAdmin
from registry.models import Agent, AgentCredential

RECENT = 20  # audit rows (and, in tasks.admin.agents, task events) on the detail page


@admin.register(Agent)
class AgentAdmin(AgentOperationsAdmin):
    list_display: tuple[str, ...] = (  # tasks.admin.agents swaps "capacity" for running / capacity
        "id",
        "name",
        "connectivity_badge",
        "admin_state_badge",
        "last_seen",
        "label_chips",
        "capability_list",
        "version",
        "capacity",
    )
    list_filter = ("connectivity", "admin_state", VersionFilter, CapabilityFilter, LabelFilter)
    search_fields = ("id", "name")  # the search itself is get_search_results: a prefix match
    search_help_text = "Agent id or name, from its start."
    sortable_by = ("id", "last_seen", "version")
    show_facets = admin.ShowFacets.NEVER  # facet counts scan the whole table
    list_per_page = 50

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

    @admin.display(description="capacity")
    def capacity(self, agent: Agent) -> int:
        """The agent's ``max_concurrency``; ``tasks.admin.agents`` shows it with what the agent holds."""
        return agent.max_concurrency

    # --- detail page -----------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        agent = self.get_object(request, unquote(object_id))
        if agent is not None:  # else Django answers (redirect with "does not exist")
            context.update(self.detail_context(request, agent))
        context["can_operate"] = self.has_operate_permission(request)
        context["can_issue_credentials"] = self.has_issue_credentials_permission(request)
        context["can_revoke_credentials"] = self.has_revoke_credentials_permission(request)
        context["operations"] = self.detail_buttons(agent)
        return super().change_view(request, object_id, form_url, context)

    def detail_context(self, request: HttpRequest, agent: Agent) -> dict[str, Any]:
        """What the detail page shows besides the agent's fields: a handful of bounded, indexed queries.

        Credentials and audit rows are read only for a viewer with their view permission (``None``
        otherwise: the section is left out). A subclass adds its sections to this dict.
        """
        viewer = request.user
        credentials = AgentCredential.objects.filter(agent_id=agent.pk).order_by("-created_at", "-id")
        audit = AuditEvent.objects.filter(object_type="agent", object_id=agent.pk).order_by("-id")
        return {
            "connectivity_badge": display.badge(agent.connectivity),
            "admin_state_badge": display.badge(agent.admin_state),
            "last_seen": display.last_seen(agent.last_seen_at),
            "label_chips": display.label_chips(agent.labels),
            "capability_list": display.capability_list(agent.capabilities),
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
