"""The web process's recent requests, for ``/metrics/performance`` (a bounded in-memory window per process)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW_S = 300.0
_MAX_SAMPLES = 50_000


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    seconds: float
    status: int


class RequestWindow:
    def __init__(self) -> None:
        self._samples: deque[Sample] = deque(maxlen=_MAX_SAMPLES)
        self._lock = threading.Lock()

    def add(self, seconds: float, status: int) -> None:
        with self._lock:
            self._samples.append(Sample(time.monotonic(), seconds, status))

    def summary(self, window_s: float = WINDOW_S) -> dict[str, Any]:
        cutoff = time.monotonic() - window_s
        with self._lock:
            recent = [sample for sample in self._samples if sample.at >= cutoff]
        durations = sorted(sample.seconds for sample in recent)
        errors = sum(1 for sample in recent if sample.status >= 500)
        return {
            "window_s": window_s,
            "requests": len(recent),
            "requests_per_s": round(len(recent) / window_s, 3),
            "latency_ms": {f"p{p}": _percentile_ms(durations, p) for p in (50, 95, 99)},
            "error_rate": round(errors / len(recent), 4) if recent else 0.0,
        }


def _percentile_ms(values: list[float], p: int) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return round(values[index] * 1000, 2)


WINDOW = RequestWindow()
