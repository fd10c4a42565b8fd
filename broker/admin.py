from __future__ import annotations

from django.contrib import admin

from aegis_site.core.adminkit import ReadOnlyAdmin
from broker.models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "agent_id", "message_type", "created_at", "sent_at")
    list_filter = ("message_type",)
    search_fields = ("agent_id",)
