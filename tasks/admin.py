"""Read-only admin for jobs, tasks and their history: every change goes through ``tasks.actions``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from tasks.models import Job, Task, TaskEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "mode", "state", "tasks_total", "tasks_succeeded", "tasks_failed", "created_at")
    list_filter = ("state", "mode")
    search_fields = ("kind", "idempotency_key")


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "kind", "attempt", "from_state", "to_state", "agent_id", "data")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
