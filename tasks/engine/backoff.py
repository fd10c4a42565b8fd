"""Retry delays: exponential growth, a cap, and jitter so that a fleet does not retry in step."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The ceiling doubles per attempt up to ``cap_s``; the delay is drawn uniformly
    from the upper half of it ("equal jitter"), so it is never below half the
    ceiling and never above it.
    """
    ceiling = backoff_ceiling(attempt, base_s, cap_s)
    return ceiling / 2 + ceiling / 2 * rand()


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The longest wait after failed attempt ``attempt``: ``base_s`` doubled per attempt, at most ``cap_s``.

    A retry with ``reset_backoff`` counts attempts from the retry (``Task.backoff_from_attempt``),
    so its first failure waits about ``base_s`` again.
    """
    return float(min(cap_s, base_s * 2 ** min(max(attempt - 1, 0), 64)))
