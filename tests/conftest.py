"""Fixtures shared by the tests that start the control plane's roles as processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.roles import Roles


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[Roles]:
    """Roles started by the test (``roles.web()``, ``roles.bridge()`` ...), stopped after it, whatever happened."""
    started = Roles(tmp_path)
    try:
        yield started
    finally:
        started.stop()
