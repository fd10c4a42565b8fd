"""Agent changelist filters that take typed input instead of listing values.

Django's default filter for a plain field lists every distinct value (a full scan and a
dropdown of 100,000 entries at fleet scale). These filters render a text box and filter
with an index-friendly lookup:

- version: ``version = %s`` (``agents_version_idx``);
- capability: JSON containment (``capabilities @> '["gpu"]'`` on PostgreSQL, a GIN index
  on ``agents.capabilities`` serves it);
- label ``key=value[,key=value]``: ``labels @> '{"key": "value"}'`` on PostgreSQL (GIN index on
  ``agents.labels``).

SQLite has no JSON containment: there the capability filter matches the quoted name in the
array's text, the label filter compares the key's value (no index either way; SQLite is the
laptop mode).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.db import connection
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest

from registry.api.serializers import LABEL_KEY
from registry.models import Agent


def with_capability(queryset: QuerySet[Agent], capability: str) -> QuerySet[Agent]:
    if connection.vendor == "postgresql":
        return queryset.filter(capabilities__contains=[capability])
    as_text = Cast("capabilities", TextField())
    return queryset.annotate(capabilities_text=as_text).filter(capabilities_text__contains=json.dumps(capability))


def parse_labels(text: str) -> dict[str, str]:
    """``role=web,zone=eu`` → ``{"role": "web", "zone": "eu"}``; refuses anything else."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, separator, value = item.strip().partition("=")
        if not separator or not LABEL_KEY.match(key):
            raise IncorrectLookupParameters(f"label filter: use key=value, not {item!r}")
        pairs[key] = value
    return pairs


def with_labels(queryset: QuerySet[Agent], labels: dict[str, str]) -> QuerySet[Agent]:
    if connection.vendor == "postgresql":
        return queryset.filter(labels__contains=labels)
    for key, value in labels.items():  # LABEL_KEY holds no "__", so the key cannot reach another lookup
        queryset = queryset.filter(**{f"labels__{key}": value})
    return queryset


class InputFilter(admin.SimpleListFilter):
    """A text box in the filter sidebar; submitting it keeps the other filters and the search."""

    template = "admin/registry/agent/input_filter.html"
    placeholder = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: ChangeList) -> Iterator[Any]:  # one entry, read by our template
        name = self.parameter_name
        assert name is not None  # nosec B101  # SimpleListFilter refuses a missing name
        others = changelist.get_query_string(remove=[name])
        hidden = [(key, value) for key, values in changelist.filter_params.items() if key != name for value in values]
        yield {
            "parameter": name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": hidden,
            "clear_url": others,
        }


class VersionFilter(InputFilter):
    title = "version"
    parameter_name = "version"
    placeholder = "1.4.2"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> QuerySet[Agent]:
        value = (self.value() or "").strip()
        return queryset.filter(version=value) if value else queryset


class CapabilityFilter(InputFilter):
    title = "capability"
    parameter_name = "capability"
    placeholder = "gpu"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> QuerySet[Agent]:
        value = (self.value() or "").strip()
        return with_capability(queryset, value) if value else queryset


class LabelFilter(InputFilter):
    title = "label"
    parameter_name = "label"
    placeholder = "role=web,zone=eu"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> QuerySet[Agent]:
        value = (self.value() or "").strip()
        return with_labels(queryset, parse_labels(value)) if value else queryset
