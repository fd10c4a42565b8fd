"""``{% load outcomes %}``: the outcome vocabulary of ``tasks.outcomes`` in templates."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from tasks import outcomes

register = template.Library()


@register.filter
def outcome_label(state: str) -> str:
    """``timed_out`` -> "timed out": the state's label."""
    return outcomes.label(str(state))


@register.filter
def job_badge(state: str) -> SafeString:
    return outcomes.badge(str(state), "job")


@register.filter
def task_badge(state: str) -> SafeString:
    return outcomes.badge(str(state), "task")
