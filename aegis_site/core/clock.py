"""The engine's clock. Tests replace it to move time without sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.utils import timezone

_now: Callable[[], datetime] = timezone.now


def now() -> datetime:
    return _now()


def set_clock(source: Callable[[], datetime] | None) -> None:
    """Use ``source`` for every later ``now()``; ``None`` restores the real clock."""
    global _now
    _now = source or timezone.now
