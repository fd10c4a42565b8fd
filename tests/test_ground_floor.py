"""The ground floor (``aegis_site/core/``) imports no app: not ``registry``, ``tasks``, ``broker`` or ``ops``.

A stopgap read of each module's imports with ``ast`` (top-level and inside
functions alike); issue 16 item 6 replaces it with an import-linter contract
run by ``make lint``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "aegis_site" / "core"
APPS = {"registry", "tasks", "broker", "ops"}


def app_imports(source: str) -> list[str]:
    """The modules of ``APPS`` that ``source`` imports, in the order they appear."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in APPS]
    return found


def test_the_ground_floor_imports_no_app():
    modules = sorted(CORE.glob("*.py"))
    assert {module.name for module in modules} >= {"clock.py", "errors.py", "db.py", "wakeup.py", "counters.py"}

    wrong_way = {module.name: app_imports(module.read_text()) for module in modules}

    assert {name: apps for name, apps in wrong_way.items() if apps} == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tasks.engine import history", ["tasks.engine"]),
        ("import aegis_site.core.audit", ["aegis_site.core.audit"]),
        ("def late():\n    from registry.models import Agent", ["registry.models"]),
        ("from broker import outbox", ["broker"]),
        ("from django.db import connection\nimport operator\nfrom aegis_site.core import clock", []),
    ],
)
def test_the_check_sees_a_wrong_way_import(source, expected):
    assert app_imports(source) == expected
