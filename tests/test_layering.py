"""The floors hold (docs/architecture.md): ``lint-imports`` keeps the contracts in pyproject.toml, and breaks them
when a module imports the wrong way.

The wrong-way imports are written into a copy of the packages (never into the checkout),
one per contract, and each must make ``lint-imports`` fail naming that contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aegis_site", "registry", "tasks", "broker", "notify", "ops", "aegis_agent")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

FLOORS = "The floors: each imports only the ones below"  # the layers contract: every wrong-way import breaks it too
WRONG_WAY = {
    "aegis_site/core/wrong_way.py": (
        "import registry.models\n",
        "The ground floor (aegis_site.core) imports no app and not the API kit",
    ),
    "aegis_site/api/wrong_way.py": (
        "from broker.protocol import decode_json\n",
        "The API kit (aegis_site.api) imports no app",
    ),
    "registry/wrong_way.py": (
        "def later():\n    from tasks.models import Task\n    return Task\n",
        "The registry imports neither tasks, nor broker, nor ops",
    ),
    "tasks/wrong_way.py": ("from ops import tokens\n", "Nothing imports ops but ops itself and the site"),
    "aegis_agent/wrong_way.py": ("import django\n", "The agent (aegis_agent) imports no Django and no project app"),
    # The engine tells notify through tasks.signals; importing it would put notify below tasks.
    "broker/wrong_way.py": ("from notify import outbox\n", FLOORS),
}


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("layering")
    shutil.copy(ROOT / "pyproject.toml", where)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def test_the_checkout_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken." in result.stdout, result.stdout


@pytest.mark.parametrize("path", sorted(WRONG_WAY))
def test_a_wrong_way_import_breaks_its_contract(copy: Path, path: str) -> None:
    source, contract = WRONG_WAY[path]
    module = copy / path
    module.write_text(source)
    try:
        result = lint_imports(copy)
    finally:
        module.unlink()
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN") or " BROKEN (" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
    assert all(line.startswith((contract, FLOORS)) for line in broken), result.stdout  # nothing else breaks
