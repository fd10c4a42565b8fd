"""Signal receivers that write notification events in the transaction of their cause (filled by issue 18's work)."""

from __future__ import annotations


def connect() -> None:
    """Connect every receiver (``NotifyConfig.ready``)."""
