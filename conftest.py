"""Fixtures shared by every app's tests: a controllable clock, agents and jobs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from registry.models import Agent, Connectivity
from tasks.engine.submit import JobSpec


class FakeClock:
    """A clock the test moves by hand: backoff and lease expiry without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@pytest.fixture(autouse=True)
def _claim_wakeups_closed() -> Iterator[None]:
    """A test whose long-poll claim started the LISTEN thread closes it: no connection outlives the test database."""
    yield
    from tasks.engine.longpoll import WAITS

    WAITS.stop()


@pytest.fixture
def frozen_clock() -> Iterator[FakeClock]:
    fake = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    clock.set_clock(fake)
    yield fake
    clock.set_clock(None)


@pytest.fixture
def operator() -> Actor:
    return Actor("tester")


@pytest.fixture
def make_agent(db: Any) -> Any:
    def make(agent_id: str, online: bool = True, **fields: Any) -> Agent:
        fields.setdefault("max_concurrency", 4)
        fields.setdefault("last_seen_at", clock.now())
        return Agent.objects.create(
            pk=agent_id, connectivity=Connectivity.ONLINE if online else Connectivity.OFFLINE, **fields
        )

    return make


@pytest.fixture
def spec() -> Any:
    def make(**fields: Any) -> JobSpec:
        """A spec that passes the submit checks whatever the fleet (tasks/tests/test_submit_checks.py tests them):
        an untargeted spec says target_all, and a target that matches no agent or agents without the kind are
        allowed, so engine tests can set up any job."""
        fields.setdefault("kind", "echo")
        untargeted = not any(fields.get(name) for name in ("target_agent_ids", "target_labels", "target_capabilities"))
        fields.setdefault("target_all", untargeted)
        fields.setdefault("allow_no_agents", True)
        fields.setdefault("allow_unsupported_kind", True)
        fields.setdefault("backoff_base_s", 10.0)
        fields.setdefault("backoff_cap_s", 100.0)
        return JobSpec(**fields)

    return make


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked ``postgres`` run only when the suite runs against PostgreSQL."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (run with DATABASE_URL=postgres://...)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


__all__ = ["FakeClock", "connection"]
