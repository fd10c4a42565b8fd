"""Tasks and their history in the admin: every change goes through ``tasks.actions``."""

from __future__ import annotations

from django.contrib import admin

from ops.adminkit import ReadOnlyAdmin, ReadOnlyInline
from tasks.models import Task, TaskEvent


class TaskEventInline(ReadOnlyInline):
    model = TaskEvent
    fields = ("created_at", "kind", "attempt", "from_state", "to_state", "agent_id", "data")
    readonly_fields = fields


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = ("id", "job_id", "kind", "state", "agent_id", "attempt", "not_before", "lease_expires_at")
    list_filter = ("state",)
    search_fields = ("=id", "=job__id", "agent__id")
    raw_id_fields = ("job", "agent")
    inlines = [TaskEventInline]


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "task_id", "kind", "attempt", "from_state", "to_state", "agent_id", "created_at")
    list_filter = ("kind",)
    search_fields = ("=task__id", "agent_id", "message_id")
    raw_id_fields = ("task",)
