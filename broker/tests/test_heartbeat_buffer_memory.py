"""What the heartbeat buffer remembers stays bounded by what happened lately, not by every agent id ever heard."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from broker import presence
from broker.models import OutboxMessage
from broker.presence import HELLO_REQUEST_INTERVAL_S, HeartbeatBuffer

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: Any) -> Clock:
    fake = Clock()
    monkeypatch.setattr(presence.time, "monotonic", fake)
    return fake


def heard_from(buffer: HeartbeatBuffer, agent_ids: list[str]) -> None:
    for agent_id in agent_ids:
        buffer.add(agent_id, timezone.now())
    buffer.flush()


def test_unknown_agents_asked_for_their_hello_are_forgotten_after_the_interval(clock: Clock) -> None:
    buffer = HeartbeatBuffer()
    heard_from(buffer, [f"ghost-{n}" for n in range(50)])
    assert len(buffer._asked) == 50
    assert OutboxMessage.objects.count() == 50  # each one asked once

    clock.now += HELLO_REQUEST_INTERVAL_S / 2
    heard_from(buffer, ["ghost-0", "other-1"])  # within the interval: ghost-0 is not asked again
    assert OutboxMessage.objects.count() == 51
    assert len(buffer._asked) == 51

    clock.now += HELLO_REQUEST_INTERVAL_S
    heard_from(buffer, ["other-2"])  # every earlier ask has expired: only this one is remembered
    assert set(buffer._asked) == {"other-2"}
    assert OutboxMessage.objects.count() == 52

    heard_from(buffer, ["ghost-0"])  # forgotten, so asked again, as before the pruning
    assert OutboxMessage.objects.count() == 53
