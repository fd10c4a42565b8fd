"""How the agent pages show state: badges, "2 min ago", label chips, running/capacity.

Plain functions returning safe HTML, so the changelist columns and the detail page show
an agent the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from aegis_site.core import clock

TONES = {
    "online": "ok",
    "offline": "off",
    "active": "ok",
    "draining": "warn",
    "disabled": "bad",
}


def badge(value: str) -> SafeString:
    """A coloured word; the colour follows the state (``TONES``), the text stays readable without colour."""
    return format_html('<span class="aegis-badge aegis-badge-{}">{}</span>', TONES.get(value, "off"), value)


def ago(moment: datetime, now: datetime) -> str:
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 10:
        return "just now"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def last_seen(moment: datetime | None, now: datetime | None = None) -> SafeString:
    """Relative time for the eye, the exact UTC time in the title for whoever needs it."""
    if moment is None:
        return format_html('<span class="aegis-muted">{}</span>', "never")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.astimezone(UTC).isoformat(),
        utc(moment),
        ago(moment, now or clock.now()),
    )


def label_chips(labels: Mapping[str, Any] | None) -> SafeString:
    if not labels:
        return format_html('<span class="aegis-muted">{}</span>', "none")
    return format_html_join(
        " ", '<span class="aegis-chip">{}={}</span>', ((key, value) for key, value in sorted(labels.items()))
    )


def capability_list(capabilities: Iterable[str] | None) -> SafeString:
    if not capabilities:
        return format_html('<span class="aegis-muted">{}</span>', "none")
    return format_html_join(" ", '<span class="aegis-chip aegis-chip-cap">{}</span>', ((c,) for c in capabilities))


def load(held: int, capacity: int) -> SafeString:
    """``held`` tasks (assigned + running) over the agent's ``max_concurrency``; full is highlighted."""
    tone = "warn" if capacity and held >= capacity else "plain"
    return format_html('<span class="aegis-load aegis-load-{}">{}/{}</span>', tone, held, capacity)
