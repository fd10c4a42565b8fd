from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from broker.models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "agent_id", "message_type", "created_at", "sent_at")
    list_filter = ("message_type",)
    search_fields = ("agent_id",)
    readonly_fields = [f.name for f in OutboxMessage._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
