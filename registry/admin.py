"""Read-mostly admin for the registry (operator actions arrive with the admin issue)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ops.adminkit import ReadOnlyAdmin, ReadOnlyInline
from ops.audit import Actor
from registry import actions
from registry.models import Agent, AgentCredential


class CredentialInline(ReadOnlyInline):
    model = AgentCredential
    fields = ("kind", "token_prefix", "cert_fingerprint", "cert_serial", "created_at", "expires_at", "revoked_at")
    readonly_fields = fields


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "connectivity", "admin_state", "last_seen_at", "version", "max_concurrency")
    list_filter = ("connectivity", "admin_state")
    search_fields = ("id", "name")
    readonly_fields = ("connectivity", "last_seen_at", "disconnect_reason", "enrolled_at", "updated_at")
    inlines = [CredentialInline]
    show_full_result_count = False

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        actions.remove_agent(obj.pk, Actor.of_user(request.user))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent_id in queryset.values_list("pk", flat=True):
            actions.remove_agent(agent_id, Actor.of_user(request.user))


@admin.register(AgentCredential)
class AgentCredentialAdmin(ReadOnlyAdmin):
    list_display = ("agent", "kind", "token_prefix", "created_at", "expires_at", "revoked_at")
    list_filter = ("kind",)
    search_fields = ("agent__id", "token_prefix", "cert_fingerprint")

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Credentials go with their agent when it is removed; the admin's delete
        # confirmation checks this permission for every cascaded model.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)
