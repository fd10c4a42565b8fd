"""Prometheus alert rules (deploy/prometheus/): promtool validates them and runs their unit tests.

promtool comes with the Debian package ``prometheus`` (``apt-get install -y --no-install-recommends
prometheus``; the CI script installs it). Without it these tests fail rather than skip: an alert
file nobody checked is worse than none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"

# Sections of docs/operations.md that runbook annotations may point at (the headings' anchors).
RUNBOOK_ANCHORS = {
    "service-down",
    "role-stuck",
    "http-5xx-errors",
    "high-cpu",
    "high-memory",
    "disk-space-low",
    "certificate-expiry",
    "crl-expiry",
    "agent-certificate-expiry",
    "slow-responses",
    "slow-database",
    "connection-pool-exhaustion",
    "authentication-failures",
    "rate-limiting",
    "queue-stale",
    "lease-expiries",
    "agents-offline",
    "outbox-backlog",
    "mqtt-dropped-messages",
    "notification-backlog",
}
GROUPS = {"aegis-critical", "aegis-warning", "aegis-queue"}
SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install the Debian package 'prometheus' "
            "(apt-get install -y --no-install-recommends prometheus), as the CI script does",
            pytrace=False,
        )
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    command = " ".join(["promtool", *args])
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_rules_are_valid() -> None:
    run_promtool("check", "rules", "deploy/prometheus/alerts.yml")


def test_rule_unit_tests_pass() -> None:
    run_promtool("test", "rules", "deploy/prometheus/alerts_test.yml")


def test_scrape_config_syntax() -> None:
    run_promtool("check", "config", "--syntax-only", "deploy/prometheus/prometheus.yml")


def test_scrape_config_with_files(tmp_path: Path) -> None:
    """The full check (rule files, credential files) on a copy whose token file exists."""
    token_path = "/run/secrets/metrics_token"
    config = CONFIG.read_text()
    assert config.count(f"credentials_file: {token_path}") == 1
    token = tmp_path / "metrics_token"
    token.write_text("test-token\n")
    (tmp_path / "prometheus.yml").write_text(config.replace(token_path, str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")  # rule_files are relative to the config file
    run_promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_scrape_config_jobs() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "aegis-web",
        "aegis-bridge",
        "aegis-dispatcher",
        "aegis-notifier",
        "postgres",
        "mosquitto",
        "node",
    }
    web = jobs["aegis-web"]
    assert web["metrics_path"] == "/metrics"
    assert web["authorization"]["type"] == "Bearer"
    assert config["rule_files"] == ["alerts.yml"]


def alerts() -> list[tuple[str, dict[str, Any]]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [(group["name"], rule) for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_labelled_and_documented() -> None:
    found = alerts()
    assert {group for group, _ in found} == GROUPS
    names = [rule["alert"] for _, rule in found]
    assert len(names) == len(set(names)), "duplicate alert names"
    problems = []
    for _, rule in found:
        name = rule["alert"]
        labels = rule.get("labels", {})
        annotations = rule.get("annotations", {})
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
        runbook = str(annotations.get("runbook", ""))
        match = re.fullmatch(r"docs/operations\.md#([a-z0-9-]+)", runbook)
        if match is None:
            problems.append(f"{name}: runbook {runbook!r} is not docs/operations.md#<anchor>")
        elif match.group(1) not in RUNBOOK_ANCHORS:
            problems.append(f"{name}: runbook anchor {match.group(1)!r} is not a known section")
    assert not problems, "\n".join(problems)


def test_every_runbook_anchor_is_a_heading_of_the_operations_guide() -> None:
    """GitHub's anchors: a heading lowercased, spaces to hyphens, other punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "operations.md").read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}
    missing = RUNBOOK_ANCHORS - anchors
    assert not missing, sorted(missing)


def test_critical_group_holds_only_critical_alerts() -> None:
    for group, rule in alerts():
        if group == "aegis-critical":
            assert rule["labels"]["severity"] == "critical", rule["alert"]
        if group == "aegis-warning":
            assert rule["labels"]["severity"] == "warning", rule["alert"]


def test_the_contract_metrics_are_used() -> None:
    """The metric names agreed with the roles that export them appear in the rules."""
    text = ALERTS.read_text()
    for metric in (
        "up",
        "aegis_role_heartbeat_age_seconds",
        "django_http_responses_total_by_status_view_method_total",
        "aegis_system_cpu_percent",
        "aegis_system_memory_percent",
        "aegis_disk_free_ratio",
        "django_http_requests_latency_seconds_by_view_method_bucket",
        "aegis_db_query_duration_seconds_bucket",
        "aegis_db_pool_in_use",
        "aegis_db_pool_size",
        "aegis_auth_failures_total",
        "aegis_rate_limited_total",
        "aegis_certificate_expiry_seconds",
        "aegis_crl_next_update_seconds",
        "aegis_agent_certificates_expiring",
        "aegis_agent_certificates_expired",
        "aegis_agent_certificate_soonest_expiry_seconds",
        "aegis_queue_oldest_age_seconds",
        "aegis_lease_expiries_total",
        "aegis_agents",
        "aegis_outbox_backlog",
        "aegis_mqtt_dropped_total",
        "aegis_notify_oldest_due_age_seconds",
    ):
        assert re.search(rf"\b{metric}\b", text), metric
