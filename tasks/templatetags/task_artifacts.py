"""``{% load task_artifacts %}{% task_artifacts task %}``: the task page's artifact list (``tasks.admin.artifacts``)."""

from __future__ import annotations

from typing import Any

from django import template

from tasks.admin import artifacts

register = template.Library()


@register.inclusion_tag("admin/tasks/task/artifacts.html")
def task_artifacts(task: Any) -> dict[str, Any]:
    shown, truncated = artifacts.rows(task.pk)
    return {"task": task, "artifact_rows": shown, "artifacts_truncated": truncated, "limit": artifacts.PAGE_LIMIT}
