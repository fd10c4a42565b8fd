"""Filter parts the API's FilterSets share."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

# RFC 3339, what the OpenAPI "date-time" format means; Django's parser would also take "2024-01-01" or a space.
_RFC3339 = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z", re.IGNORECASE)


class NoEmptyValuesForm(forms.Form):
    """``?state=`` or ``?created_after=`` is a 400, as the schema's formats say, not a filter silently left out.

    Plain text parameters keep django-filter's meaning of empty: no filter.
    """

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name, field in self.fields.items():
            if type(field) is not forms.CharField and self.data.get(name) == "":
                self.add_error(name, "May not be empty; leave the parameter out instead.")
        return cleaned


class StrictFilterSet(django_filters.FilterSet):
    class Meta:
        form = NoEmptyValuesForm


class UtcDateTimeField(IsoDateTimeField):
    """An RFC 3339 time (the schema's ``date-time``), in UTC: PostgreSQL refuses offsets past ±16 h (``-23:54``)."""

    def to_python(self, value: Any) -> datetime | None:
        if value not in (None, "") and not _RFC3339.match(str(value)):
            raise ValidationError("Use an RFC 3339 date-time, e.g. 2026-11-27T18:00:00Z.", code="invalid")
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # year 1 or 9999 moved past the calendar's ends
            raise ValidationError("Out of range.", code="invalid") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField
