"""Certificate and CRL expiry gauges: what the broker directory and the MQTT client settings hold.

Series (the contract with deploy/prometheus/alerts.yml):

- ``aegis_certificate_expiry_seconds{file,subject,serial}``: each CA, Mosquitto's server certificate and
  the bridge's certificate (``BROKER_DIR``'s ``ca.crt``, ``ca-bundle.crt``, ``server.crt``, ``bridge.crt``,
  and the files ``MQTT_CA_FILE``/``MQTT_CERT_FILE`` name). A certificate in two files is listed once.
- ``aegis_crl_next_update_seconds{file}``: until the soonest ``nextUpdate`` of the CRLs in ``crl.pem``.
  Past it, OpenSSL (so Mosquitto) refuses every client certificate of that CA.
- Agent certificates (``BROKER_DIR/issued/``, the current one per agent: neither revoked nor
  superseded by a newer one), without a series per agent, which at 100k agents would be 100k series:
  ``aegis_agent_certificates_expired``, ``aegis_agent_certificates_expiring`` (not yet expired, expiring
  within ``AGENT_EXPIRING_DAYS``) and ``aegis_agent_certificate_soonest_expiry_seconds{agent}`` (one
  series: the next agent certificate to expire, to name one in the alert).

The scan runs per scrape, so it is cached for ``SCAN_TTL`` seconds, and each file is parsed again only
when its size or modification time changed: a scrape of 100k issued certificates costs their ``stat``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from django.conf import settings
from prometheus_client.core import GaugeMetricFamily, Metric

from registry.pki.crypto import normalize_serial
from registry.pki.layout import CaLayout
from registry.pki.revocation import load_revocations

SCAN_TTL = 30.0
AGENT_EXPIRING_DAYS = 30


@dataclass(frozen=True, slots=True)
class Cert:
    file: str
    subject: str
    serial: str
    common_name: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(slots=True)
class Scan:
    certificates: list[Cert] = field(default_factory=list)
    crl_next_update: dt.datetime | None = None
    agents: list[Cert] = field(default_factory=list)  # the current certificate of each agent


class _ParsedFiles:
    """Parsed PEM files by path, reused while (size, mtime) is unchanged."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int], list[Cert]]] = {}

    def certificates(self, path: Path) -> list[Cert]:
        try:
            stat = path.stat()
        except OSError:
            return []
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            found = [_describe(path.name, cert) for cert in x509.load_pem_x509_certificates(path.read_bytes())]
        except (OSError, ValueError):
            found = []
        self._cache[path] = (key, found)
        return found

    def forget_except(self, paths: set[Path]) -> None:
        for path in set(self._cache) - paths:
            del self._cache[path]


def _describe(file: str, cert: x509.Certificate) -> Cert:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Cert(
        file=file,
        subject=cert.subject.rfc4514_string(),
        serial=normalize_serial(cert.serial_number),
        common_name=str(names[0].value) if names else "",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


class CertificateScanner:
    def __init__(self, ttl: float = SCAN_TTL) -> None:
        self.ttl = ttl
        self._files = _ParsedFiles()
        self._lock = threading.Lock()
        self._scanned_at = float("-inf")
        self._scan = Scan()

    def scan(self) -> Scan:
        with self._lock:
            if time.monotonic() - self._scanned_at >= self.ttl:
                self._scan = self._read()
                self._scanned_at = time.monotonic()
            return self._scan

    def _read(self) -> Scan:
        scan = Scan()
        layout = CaLayout(Path(settings.BROKER_DIR)) if settings.BROKER_DIR else None
        paths = [layout.ca_cert, layout.server_cert, layout.bridge_cert, layout.ca_bundle] if layout else []
        paths += [Path(value) for value in (settings.MQTT_CA_FILE, settings.MQTT_CERT_FILE) if value]
        seen: set[str] = set()
        for path in paths:
            for cert in self._files.certificates(path):
                if cert.serial not in seen:
                    seen.add(cert.serial)
                    scan.certificates.append(cert)
        issued: list[Path] = []
        if layout is not None:
            scan.crl_next_update = _crl_next_update(layout.crl)
            issued = sorted(layout.issued.glob("*.crt")) if layout.issued.is_dir() else []
            scan.agents = self._current_agent_certs(layout, issued)
        self._files.forget_except(set(paths) | set(issued))
        return scan

    def _current_agent_certs(self, layout: CaLayout, issued: list[Path]) -> list[Cert]:
        """The newest certificate of each agent (as ``check_certs`` counts them), unless it is revoked."""
        newest: dict[str, Cert] = {}
        for path in issued:
            for cert in self._files.certificates(path):
                held = newest.get(cert.common_name)
                if held is None or (cert.not_before, cert.not_after) >= (held.not_before, held.not_after):
                    newest[cert.common_name] = cert
        try:
            revoked = load_revocations(layout).serials
        except (OSError, ValueError):
            revoked = set()
        return [cert for cert in newest.values() if cert.serial not in revoked]


def _crl_next_update(path: Path) -> dt.datetime | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    marker = b"-----BEGIN X509 CRL-----"
    soonest = None
    for part in data.split(marker)[1:]:
        try:
            next_update = x509.load_pem_x509_crl(marker + part).next_update_utc
        except ValueError:
            continue
        if next_update is not None and (soonest is None or next_update < soonest):
            soonest = next_update
    return soonest


SCANNER = CertificateScanner()


def collect(now: dt.datetime) -> Iterator[Metric]:
    scan = SCANNER.scan()
    expiry = GaugeMetricFamily(
        "aegis_certificate_expiry_seconds",
        "Seconds until each CA, server and bridge certificate expires (negative: expired).",
        labels=["file", "subject", "serial"],
    )
    for cert in scan.certificates:
        expiry.add_metric([cert.file, cert.subject, cert.serial], (cert.not_after - now).total_seconds())
    yield expiry
    if scan.crl_next_update is not None:
        crl = GaugeMetricFamily(
            "aegis_crl_next_update_seconds",
            "Seconds until the CRL's next update (negative: expired, Mosquitto refuses every client).",
            labels=["file"],
        )
        crl.add_metric(["crl.pem"], (scan.crl_next_update - now).total_seconds())
        yield crl
    if settings.BROKER_DIR:
        yield from _agents(scan.agents, now)


def _agents(agents: list[Cert], now: dt.datetime) -> Iterator[Metric]:
    horizon = now + dt.timedelta(days=AGENT_EXPIRING_DAYS)
    expired = sum(1 for cert in agents if cert.not_after <= now)
    expiring = sum(1 for cert in agents if now < cert.not_after <= horizon)
    yield GaugeMetricFamily(
        "aegis_agent_certificates_expired", "Agents whose current certificate has expired.", value=expired
    )
    yield GaugeMetricFamily(
        "aegis_agent_certificates_expiring",
        f"Agents whose current certificate expires within {AGENT_EXPIRING_DAYS} days.",
        value=expiring,
    )
    valid = [cert for cert in agents if cert.not_after > now]
    soonest = GaugeMetricFamily(
        "aegis_agent_certificate_soonest_expiry_seconds",
        "Seconds until the next agent certificate expires, labelled with that agent.",
        labels=["agent"],
    )
    if valid:
        first = min(valid, key=lambda cert: cert.not_after)
        soonest.add_metric([first.common_name], (first.not_after - now).total_seconds())
    yield soonest
