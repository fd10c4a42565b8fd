"""Query-string filters of the job and task lists. A malformed value is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from drf_spectacular.utils import extend_schema_field

from aegis_site.api.filters import StrictFilterSet, UtcDateTimeFilter
from tasks.models import Job, JobMode, JobState, Task, TaskState

MAX_ID = 2**63 - 1  # a foreign key's lookup passes a larger number on to the driver, which overflows
MAX_ATTEMPT = 32_767  # Task.attempt is a smallint


class IntegerFilter(django_filters.Filter):
    """A whole number in bounds: ``NumberFilter`` would take ``1.5`` and match 1. The schema shows the bounds."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, min_value: int, max_value: int, **kwargs: Any) -> None:
        super().__init__(*args, min_value=min_value, max_value=max_value, **kwargs)
        schema: dict[str, Any] = {"type": "integer", "minimum": min_value, "maximum": max_value}
        if "help_text" in kwargs:
            schema["description"] = kwargs["help_text"]
        extend_schema_field(schema)(self)


class JobFilter(StrictFilterSet):
    state = django_filters.ChoiceFilter(choices=JobState.choices)
    kind = django_filters.CharFilter()
    mode = django_filters.ChoiceFilter(choices=JobMode.choices)

    class Meta(StrictFilterSet.Meta):
        model = Job
        fields = ("state", "kind", "mode")


class TaskFilter(StrictFilterSet):
    state = django_filters.ChoiceFilter(choices=TaskState.choices)
    kind = django_filters.CharFilter()
    agent = django_filters.CharFilter(field_name="agent_id", help_text="Agent id.")
    job = IntegerFilter(field_name="job_id", min_value=1, max_value=MAX_ID, help_text="Job id.")
    attempt = IntegerFilter(min_value=0, max_value=MAX_ATTEMPT)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta(StrictFilterSet.Meta):
        model = Task
        fields = ("state", "kind", "agent", "job", "attempt", "created_after", "created_before")
