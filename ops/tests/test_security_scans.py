"""Security scans as tests: a new bandit finding fails the suite; the pip-audit verdict is checked.

The full scans run with ``scripts/security_scan.sh`` (bandit with pyproject.toml's [tool.bandit],
pip-audit against requirements.txt and requirements-dev.txt). A finding is either fixed or justified
where it stands with ``# nosec BXXX  # reason``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "security_scan.sh"
BANDIT_TARGETS = ["aegis_site", "registry", "tasks", "broker", "ops", "aegis_agent"]


def test_bandit_finds_nothing() -> None:
    if importlib.util.find_spec("bandit") is None:
        pytest.fail("bandit is not installed: pip install -r requirements-dev.txt", pytrace=False)
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-r", "-q", "-f", "json", *BANDIT_TARGETS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode in (0, 1), f"bandit failed to run (exit {result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout)
    assert not report["errors"], report["errors"]
    scanned = report["metrics"]
    assert any(name.startswith("aegis_agent/") for name in scanned), "bandit scanned nothing"
    assert not any("/tests/" in name for name in scanned), "tests are out of bandit's scope"
    findings = [
        f"{issue['filename']}:{issue['line_number']}: {issue['test_id']} {issue['issue_text']}\n    {issue['code']}"
        for issue in report["results"]
    ]
    assert not findings, (
        "bandit findings (fix them, or justify each on its line with '# nosec BXXX  # reason'):\n" + "\n".join(findings)
    )


def judge_pip_audit(tmp_path: Path, report: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    env = {**os.environ, "PIP_AUDIT_REPORT": str(path), "VENV": str(Path(sys.executable).parent.parent)}
    return subprocess.run(
        ["bash", str(SCRIPT), "pip-audit"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_pip_audit_vulnerability_fails(tmp_path: Path) -> None:
    vuln = {"id": "PYSEC-0000-1", "fix_versions": ["5.2.20"], "aliases": ["CVE-0000-1"], "description": "x"}
    result = judge_pip_audit(
        tmp_path,
        {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": [vuln]}], "fixes": []},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "VULNERABLE django 5.2.19: PYSEC-0000-1" in result.stdout


def test_pip_audit_clean_passes(tmp_path: Path) -> None:
    result = judge_pip_audit(
        tmp_path, {"dependencies": [{"name": "django", "version": "5.2.19", "vulns": []}], "fixes": []}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 dependencies audited, no known vulnerabilities" in result.stdout


def test_pip_audit_unreachable_source_is_skipped(tmp_path: Path) -> None:
    reason = "Dependency not found on PyPI and could not be audited: django (5.2.19)"
    result = judge_pip_audit(tmp_path, {"dependencies": [{"name": "django", "skip_reason": reason}], "fixes": []})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped: advisory source unreachable" in result.stdout
