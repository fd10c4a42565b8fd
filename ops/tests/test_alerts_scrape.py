"""The alert rules run on what the roles really export, and Prometheus scrapes ports the roles really open.

The web role (daphne, production settings) runs on a broker directory with an expired bridge certificate,
a server certificate about to expire, an expired CRL and agent certificates in every state, while the
broker is down (``/healthz/comprehensive`` answers 500). ``/metrics`` is scraped with the metrics token and
the scraped series become promtool's ``input_series``: the alerts must fire naming the certificate the
metric labels carry, and the probes' 500s must not make an HTTP error rate.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from prometheus_client.parser import text_string_to_metric_families

from ops.tests.test_alert_rules import CONFIG, PROMETHEUS, promtool
from registry.pki import crypto
from registry.pki.crypto import normalize_serial
from tests.roles import ROOT, Roles, request
from tests.support import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # the role processes read the test database

TOKEN = "metrics-token-for-the-alert-test"
JOB = {"job": "aegis-web", "instance": "app:8000"}
DAY = 86400
CRL_EXPIRED = (
    "The CRL in crl.pem passed its next update {when} ago;"
    " Mosquitto refuses every client certificate until it is rewritten and Mosquitto restarted."
)


# --- a broker directory with certificates in every state --------------------------------------------


def _write_cert(
    path: Path, ca: crypto.IssuedCertificate, common_name: str, not_before: dt.datetime, days: float
) -> Any:
    """A leaf signed by ``ca`` valid from ``not_before`` for ``days`` (so it may have expired already)."""
    key = crypto.generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .sign(ca.private_key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


@pytest.fixture
def broker_dir(tmp_path: Path) -> dict[str, Any]:
    directory = tmp_path / "broker"
    directory.mkdir()
    now = dt.datetime.now(dt.UTC)
    ca = crypto.create_ca()
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    made = {
        "dir": directory,
        "ca": ca.certificate,
        # Mosquitto's certificate: 10 days left.
        "server": _write_cert(directory / "server.crt", ca, "mosquitto", now - dt.timedelta(days=387), 397),
        # The bridge's: expired two days ago.
        "bridge": _write_cert(directory / "bridge.crt", ca, "aegis-bridge", now - dt.timedelta(days=399), 397),
    }
    issued = directory / "issued"
    made["soon"] = _write_cert(issued / "edge-soon-1.crt", ca, "edge-soon", now - dt.timedelta(days=392), 397)
    _write_cert(issued / "edge-fine-1.crt", ca, "edge-fine", now - dt.timedelta(days=1), 397)
    _write_cert(issued / "edge-gone-1.crt", ca, "edge-gone", now - dt.timedelta(days=400), 397)  # expired
    # Superseded by a renewal (does not count), and a revoked one (does not count either).
    _write_cert(issued / "edge-renewed-1.crt", ca, "edge-renewed", now - dt.timedelta(days=500), 397)
    _write_cert(issued / "edge-renewed-2.crt", ca, "edge-renewed", now - dt.timedelta(days=2), 397)
    revoked = _write_cert(issued / "edge-revoked-1.crt", ca, "edge-revoked", now - dt.timedelta(days=400), 397)
    entry = {
        "serial": normalize_serial(revoked.serial_number),
        "agent_id": "edge-revoked",
        "revoked_at": now.isoformat(),
    }
    (directory / "revoked.json").write_text(json.dumps({"crl_number": 1, "revoked": [entry]}))
    # A CRL whose next update passed a day ago: OpenSSL now refuses every client of this CA.
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(days=181))
        .next_update(now - dt.timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    )
    (directory / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return made


# --- a scrape turned into promtool input ------------------------------------------------------------


def scrape(base_url: str, path: str = "/metrics", token: str = TOKEN) -> str:
    call = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(call, timeout=30) as response:  # nosec B310 (loopback)
        assert response.status == 200
        return str(response.read().decode())


def samples(text: str) -> dict[str, tuple[str, dict[str, str], float]]:
    """Every finite sample of an exposition, by its series selector."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):
                labels = sample.labels | JOB
                found[selector(sample.name, labels)] = (family.type, labels, sample.value)
    return found


def selector(name: str, labels: dict[str, str]) -> str:
    quoted = ", ".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
    return f"{name}{{{quoted}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def input_series(before: str, after: str, minutes: int = 20) -> list[dict[str, str]]:
    """Two scrapes a "minute" apart, extended: counters keep growing by what grew between the scrapes
    (the traffic between them repeats every minute), gauges keep their last value (whole seconds)."""
    first, last = samples(before), samples(after)
    series = []
    for name, (kind, _, value) in sorted(last.items()):
        if kind in {"counter", "histogram", "summary"} and not name.split("{")[0].endswith("_created"):
            start = first.get(name, (kind, {}, 0.0))[2]
            step = value - start
            series.append({"series": name, "values": f"{start:.0f}+{step:.0f}x{minutes}"})
        else:
            series.append({"series": name, "values": f"{round(value)}x{minutes}"})
    return series


def humanize_duration(seconds: float) -> str:
    """Prometheus' humanizeDuration for values of a day or more."""
    whole = int(seconds)
    return f"{whole // DAY}d {whole // 3600 % 24}h {whole // 60 % 60}m {whole % 60}s"


def run_promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    document = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "scraped_test.yml").write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return subprocess.run(
        [promtool(), "test", "rules", "scraped_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[Roles]:
    data = tmp_path / "data"
    data.mkdir()
    started = Roles(data)
    yield started
    started.stop()


def cert_alert(name: str, severity: str, file: str, cert: Any, value: float, description: str) -> dict[str, Any]:
    subject = cert.subject.rfc4514_string()
    serial = normalize_serial(cert.serial_number)
    when = humanize_duration(abs(value))
    state = "has expired" if name == "AegisCertificateExpired" else "expires within 30 days"
    return {
        "exp_labels": {"severity": severity, **JOB, "file": file, "subject": subject, "serial": serial},
        "exp_annotations": {
            "summary": f"Certificate {subject} ({file}) {state}",
            "description": description.format(subject=subject, serial=serial, file=file, when=when),
            "runbook": "docs/operations.md#certificate-expiry",
        },
    }


def value_of(scraped: dict[str, tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    for series, (_, found, value) in scraped.items():
        if series.startswith(name + "{") and labels.items() <= found.items():
            return round(value)
    raise AssertionError(f"{name}{labels} is not in the scrape:\n" + "\n".join(sorted(scraped)))


def test_alerts_fire_on_a_real_scrape_and_name_the_certificate(
    roles: Roles, broker_dir: dict[str, Any], tmp_path: Path
) -> None:
    directory = broker_dir["dir"]
    closed = free_port()  # nothing listens there: the broker is down
    web = roles.web(
        BROKER_DIR=str(directory),
        MQTT_URL=f"mqtt://127.0.0.1:{closed}",
        MQTT_CA_FILE=str(directory / "ca.crt"),  # the same CA as BROKER_DIR's: listed once
        METRICS_TOKEN=TOKEN,
        METRICS_ALLOWED_NETWORKS="192.0.2.0/24",  # not loopback: the scrape needs the token, as Prometheus' does
    )
    assert request(web, "GET", "/metrics")[0] == 403
    before = scrape(web)
    for _ in range(5):  # a probe every few seconds during a broker outage
        status, body = request(web, "GET", "/healthz/comprehensive")
        assert status == 500, body
    after = scrape(web)
    scraped = samples(after)

    # The probes' 500s are in the request metrics, so a rule that counted them would fire.
    assert value_of(scraped, "django_http_responses_total_by_status_total", status="500") >= 5

    bridge = value_of(scraped, "aegis_certificate_expiry_seconds", file="bridge.crt")
    server = value_of(scraped, "aegis_certificate_expiry_seconds", file="server.crt")
    crl = value_of(scraped, "aegis_crl_next_update_seconds", file="crl.pem")
    soonest = value_of(scraped, "aegis_agent_certificate_soonest_expiry_seconds", agent="edge-soon")
    assert value_of(scraped, "aegis_agent_certificates_expiring") == 1  # edge-soon (not the superseded one)
    assert value_of(scraped, "aegis_agent_certificates_expired") == 1  # edge-gone (not the revoked one)
    ca_series = [name for name in scraped if name.startswith("aegis_certificate_expiry_seconds{")]
    assert len(ca_series) == 3, ca_series  # ca.crt, server.crt, bridge.crt: the CA once though named twice

    expired = "Certificate {subject} (serial {serial}) in {file} expired {when} ago; TLS peers refuse it."
    soon = "Certificate {subject} (serial {serial}) in {file} expires in {when}."
    tests = [
        {
            "interval": "1m",
            "input_series": input_series(before, after),
            "alert_rule_test": [
                {
                    "eval_time": "1m",
                    "alertname": "AegisCertificateExpired",
                    "exp_alerts": [
                        cert_alert(
                            "AegisCertificateExpired", "critical", "bridge.crt", broker_dir["bridge"], bridge, expired
                        )
                    ],
                },
                {
                    "eval_time": "1m",
                    "alertname": "AegisCertificateExpiringSoon",
                    "exp_alerts": [
                        cert_alert(
                            "AegisCertificateExpiringSoon", "warning", "server.crt", broker_dir["server"], server, soon
                        )
                    ],
                },
                {
                    "eval_time": "1m",
                    "alertname": "AegisCrlExpired",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", **JOB, "file": "crl.pem"},
                            "exp_annotations": {
                                "summary": "The broker's CRL (crl.pem) has expired",
                                "description": CRL_EXPIRED.format(when=humanize_duration(-crl)),
                                "runbook": "docs/operations.md#crl-expiry",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "1m",
                    "alertname": "AegisAgentCertificatesExpiring",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", **JOB},
                            "exp_annotations": {
                                "summary": "1 agent certificate(s) expire within 30 days",
                                "description": "1 agent(s) hold a current certificate that expires within 30 days;"
                                f" the first is edge-soon in {humanize_duration(soonest)}.",
                                "runbook": "docs/operations.md#agent-certificate-expiry",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "1m",
                    "alertname": "AegisAgentCertificatesExpired",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", **JOB},
                            "exp_annotations": {
                                "summary": "1 agent certificate(s) have expired",
                                "description": "1 agent(s) whose current certificate has expired can no longer"
                                " connect to Mosquitto (check_certs lists them).",
                                "runbook": "docs/operations.md#agent-certificate-expiry",
                            },
                        }
                    ],
                },
                # Only probes failed: no HTTP error rate, however long it lasts.
                {"eval_time": "15m", "alertname": "AegisHighErrorRate", "exp_alerts": []},
            ],
        }
    ]
    result = run_promtool_test(tmp_path, tests)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_the_certificate_scan_is_cached_between_scrapes(settings, broker_dir: dict[str, Any]) -> None:
    """/metrics runs per scrape: the broker directory is read again only once the scan's TTL is over."""
    from ops.metrics.certificates import CertificateScanner

    settings.BROKER_DIR = str(broker_dir["dir"])  # the scanner reads the directory the fixture wrote
    scanner = CertificateScanner(ttl=3600)
    assert len(scanner.scan().agents) == 4  # edge-soon, edge-fine, edge-gone, edge-renewed (newest)
    ca = crypto.create_ca()
    now = dt.datetime.now(dt.UTC)
    _write_cert(broker_dir["dir"] / "issued" / "edge-new-1.crt", ca, "edge-new", now, 30)
    assert len(scanner.scan().agents) == 4  # cached
    scanner.ttl = 0
    assert len(scanner.scan().agents) == 5


# --- scrape targets: the ports the compose file and the roles really use ----------------------------


def scrape_targets() -> dict[str, str]:
    config = yaml.safe_load(CONFIG.read_text())
    return {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }


ROLE_COMMANDS = {"aegis-bridge": "run_bridge", "aegis-dispatcher": "run_dispatcher", "aegis-notifier": "run_notifier"}


@pytest.mark.parametrize("job", sorted(ROLE_COMMANDS))
def test_every_role_scrape_target_is_a_port_compose_opens_and_the_role_serves(roles: Roles, job: str) -> None:
    from ops.tests.deploy_compose import load_compose

    target = scrape_targets()[job]
    host, _, port = target.rpartition(":")
    compose_service = load_compose()["services"][host]
    assert ROLE_COMMANDS[job] in compose_service["command"], f"{host} does not run {ROLE_COMMANDS[job]}"
    assert port in [str(exposed) for exposed in compose_service.get("expose", [])], f"{host} does not expose {port}"
    environment = compose_service["environment"]
    assert str(environment.get("METRICS_PORT")) == port, f"{host}: METRICS_PORT is not {port}"
    assert environment.get("METRICS_ADDR") == "0.0.0.0", f"{host}: METRICS_ADDR must listen beyond loopback"  # nosec B104

    # The role process, with the compose file's metrics settings: Prometheus' scrape answers.
    roles.start(
        job,
        [sys.executable, "manage.py", ROLE_COMMANDS[job]],
        METRICS_PORT=port,
        METRICS_ADDR=str(environment["METRICS_ADDR"]),
    )

    def answers() -> bool:
        roles.alive(job)
        try:
            return "aegis_" in scrape(f"http://127.0.0.1:{port}", token="")
        except OSError:
            return False

    wait_for(answers, f"{job} to serve /metrics on port {port}", timeout=60, interval=0.5)
    text = scrape(f"http://127.0.0.1:{port}", token="")
    assert re.search(r"^aegis_lease_expiries_total ", text, re.MULTILINE), text[:2000]


def test_kubernetes_roles_serve_metrics_on_their_declared_port() -> None:
    for name in ("bridge", "dispatcher", "notifier"):
        document = next(yaml.safe_load_all((ROOT / "deploy/k8s/base" / f"{name}.yaml").read_text()))
        container = document["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        assert str(ports["metrics"]) == env["METRICS_PORT"], name
        assert env["METRICS_ADDR"] == "0.0.0.0", name  # nosec B104
