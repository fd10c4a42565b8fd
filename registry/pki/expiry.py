"""Expiry report of a broker directory: every CA, server, bridge and agent certificate, and the CRL's next update.

``manage.py check_certs`` prints it and fails when something counted expires soon.
No Django import: files only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from registry.pki import crypto
from registry.pki.agents import issued_agent_certs
from registry.pki.authorities import issuer_id, known_cas, load_state
from registry.pki.layout import CaLayout
from registry.pki.revocation import load_crls, load_revocations


@dataclass(frozen=True)
class CertReport:
    role: str
    common_name: str
    serial: str
    not_after: dt.datetime
    days_left: int
    path: str
    status: str = "active"  # "revoked" and "superseded" certificates do not fail the check
    issuer: str = ""  # ca_id of the CA that signed it (a CA: itself); "" when none of the directory's

    @property
    def counts(self) -> bool:
        return self.status == "active"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["not_after"] = self.not_after.isoformat()
        return data


def expiry_report(layout: CaLayout, *, now: dt.datetime | None = None) -> list[CertReport]:
    """Every CA, server, bridge and agent certificate of the directory, and the CRL's next update."""
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    reports: list[CertReport] = []
    state = load_state(layout) if layout.ca_cert.exists() else None
    cas = known_cas(layout)
    if state is not None:
        for identifier in state.trusted:
            role = "ca (signing)" if identifier == state.signing else "ca (trusted)"
            path = layout.cas / f"{identifier}.crt"
            reports.append(_report(role, x509.load_pem_x509_certificate(path.read_bytes()), path, now, cas=cas))
    for role, path in (("server", layout.server_cert), ("bridge", layout.bridge_cert)):
        if path.exists():
            reports.append(_report(role, x509.load_pem_x509_certificate(path.read_bytes()), path, now, cas=cas))
    revoked = load_revocations(layout).serials
    agent_certs = issued_agent_certs(layout)
    latest = {crypto.common_name(cert): path for path, cert in agent_certs}  # sorted: the newest wins
    for path, cert in agent_certs:
        status = "active"
        if crypto.normalize_serial(cert.serial_number) in revoked:
            status = "revoked"
        elif latest[crypto.common_name(cert)] != path:
            status = "superseded"
        reports.append(_report("agent", cert, path, now, status, cas=cas))
    if layout.crl.exists():
        for crl in load_crls(layout):
            next_update = crl.next_update_utc
            if next_update is not None:
                name = crl.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
                reports.append(
                    CertReport(
                        role="crl (next update)",
                        common_name=str(name[0].value) if name else "",
                        serial="",
                        not_after=next_update,
                        days_left=_days_left(next_update, now),
                        path=str(layout.crl),
                        issuer=_crl_issuer(crl, cas),
                    )
                )
    return reports


def expiring(reports: Iterable[CertReport], days: int) -> list[CertReport]:
    return [report for report in reports if report.counts and report.days_left < days]


def _report(
    role: str,
    cert: x509.Certificate,
    path: Path,
    now: dt.datetime,
    status: str = "active",
    *,
    cas: dict[str, x509.Certificate],
) -> CertReport:
    return CertReport(
        role=role,
        common_name=crypto.common_name(cert),
        serial=crypto.normalize_serial(cert.serial_number),
        not_after=cert.not_valid_after_utc,
        days_left=_days_left(cert.not_valid_after_utc, now),
        path=str(path),
        status=status,
        issuer=issuer_id(cert, cas),
    )


def _crl_issuer(crl: x509.CertificateRevocationList, cas: dict[str, x509.Certificate]) -> str:
    """The CA whose key identifier the CRL names (``write_crl`` always adds it)."""
    try:
        wanted = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return ""
    for identifier, ca in cas.items():
        try:
            if ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest == wanted:
                return identifier
        except x509.ExtensionNotFound:
            continue
    return ""


def _days_left(not_after: dt.datetime, now: dt.datetime) -> int:
    return (not_after - now) // dt.timedelta(days=1)
