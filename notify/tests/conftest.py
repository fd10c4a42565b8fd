"""Fixtures the notification tests share: a real HTTP receiver on loopback, the setting it needs, a sender pool."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from notify.tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver().start()
    yield instance
    instance.stop()


@pytest.fixture
def loopback_allowed(settings: Any) -> None:
    """The test receiver is on 127.0.0.1, a private address the notifier refuses by default."""
    settings.NOTIFY_ALLOW_PRIVATE_ADDRESSES = True


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor
