"""``{% load aegis_json %}``: JSON values (audit data, event data) shown as JSON, never as a Python repr."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON, keys in stored order, non-ASCII kept; '' for no value. Autoescaped by the template."""
    if value is None or value == {}:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
