"""Jobs in the admin: every change goes through ``tasks.actions``."""

from __future__ import annotations

from django.contrib import admin

from ops.adminkit import ReadOnlyAdmin
from tasks.models import Job


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "mode", "state", "tasks_total", "tasks_succeeded", "tasks_failed", "created_at")
    list_filter = ("state", "mode")
    search_fields = ("kind", "idempotency_key")
