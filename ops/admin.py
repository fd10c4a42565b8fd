from __future__ import annotations

from django.contrib import admin

from ops.adminkit import ReadOnlyAdmin
from ops.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log is append-only: nobody edits or deletes it from the admin."""

    list_display = ("created_at", "actor_label", "action", "object_type", "object_id")
    list_filter = ("action", "object_type")
    search_fields = ("actor_label", "object_id")
