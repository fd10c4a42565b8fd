"""The throughput chart as plain SVG geometry, drawn by the template: no script, nothing fetched."""

from __future__ import annotations

from dataclasses import dataclass

from ops.dashboard.fleet import Minute, Throughput
from tasks.outcomes import failed_text

WIDTH = 600
HEIGHT = 120
GAP = 1.0
STACK = ("succeeded", "failed", "canceled")  # bottom to top


@dataclass(frozen=True)
class Segment:
    outcome: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    title: str
    segments: list[Segment]


def _title(minute: Minute) -> str:
    failed = failed_text(minute.failed, minute.timed_out)
    return f"{minute.start:%H:%M} UTC: {minute.succeeded} succeeded, {failed}, {minute.canceled} canceled"


def bars(throughput: Throughput, width: int = WIDTH, height: int = HEIGHT) -> list[Bar]:
    """One stacked bar per minute, scaled to the busiest minute of the hour."""
    slot = width / max(len(throughput.minutes), 1)
    peak = throughput.peak
    drawn = []
    for index, minute in enumerate(throughput.minutes):
        top = float(height)
        segments = []
        for outcome in STACK:
            count = getattr(minute, outcome)
            if not count:
                continue
            size = height * count / peak
            top -= size
            segments.append(Segment(outcome, count, round(top, 2), round(size, 2)))
        drawn.append(Bar(round(index * slot, 2), round(max(slot - GAP, 0.5), 2), _title(minute), segments))
    return drawn
