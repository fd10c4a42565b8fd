"""Agent certificates: issue one with the directory's signing CA, and read back the copies in ``issued/``.

The CA keeps a public copy (no key) of every agent certificate it issues, so that
expiry reports, revocation and the CA rotation know them all. Recording the
certificate as the agent's credential is ``registry.actions.issue_agent_certificate``.

No Django import: files only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from registry.pki import crypto
from registry.pki.authorities import issuer_id, known_cas
from registry.pki.layout import CaLayout
from registry.pki.revocation import load_revocations


@dataclass(frozen=True)
class AgentCertificate:
    """A new agent certificate and its key, with the CA certificate(s) the agent must trust, as PEM."""

    agent_id: str
    issued: crypto.IssuedCertificate
    ca_pem: bytes  # during a CA rotation the old and the new CA

    @property
    def files(self) -> dict[str, bytes]:
        """What the agent needs, by file name: ``<id>.crt``, ``<id>.key``, ``ca.crt``."""
        return {
            f"{self.agent_id}.crt": self.issued.cert_pem,
            f"{self.agent_id}.key": self.issued.key_pem,
            "ca.crt": self.ca_pem,
        }


@dataclass(frozen=True)
class AgentBundle:
    """Where ``write_agent_files`` put an agent's certificate, key and CA certificate(s)."""

    cert: Path
    key: Path
    ca_cert: Path
    issued: crypto.IssuedCertificate


@dataclass(frozen=True)
class AgentHolding:
    """An agent's newest unrevoked, unexpired certificate and the CA (``ca_id``) that issued it."""

    agent_id: str
    serial: str
    issuer: str  # "" when no CA of the directory signed it
    not_after: dt.datetime


def issue_certificate(
    layout: CaLayout, agent_id: str, *, key_algorithm: crypto.KeyAlgorithm = "ec"
) -> AgentCertificate:
    """Issue ``agent_id``'s certificate with the directory's CA and keep its public copy in ``issued/``."""
    crypto.validate_agent_id(agent_id)
    ca = crypto.load_issued(layout.ca_cert, layout.ca_key)
    issued = crypto.issue_agent_cert(ca, agent_id, key_algorithm=key_algorithm)
    crypto.write_public(layout.issued / f"{agent_id}-{issued.serial:x}.crt", issued.cert_pem)
    ca_pem = layout.ca_bundle.read_bytes() if layout.ca_bundle.exists() else ca.cert_pem
    return AgentCertificate(agent_id, issued, ca_pem)


def write_agent_files(certificate: AgentCertificate, out_directory: Path) -> AgentBundle:
    """Write the agent's certificate and key (the key private from its first byte) and ``ca.crt``."""
    bundle = AgentBundle(
        cert=out_directory / f"{certificate.agent_id}.crt",
        key=out_directory / f"{certificate.agent_id}.key",
        ca_cert=out_directory / "ca.crt",
        issued=certificate.issued,
    )
    crypto.write_issued(certificate.issued, bundle.cert, bundle.key)
    crypto.write_public(bundle.ca_cert, certificate.ca_pem)
    return bundle


def write_agent_bundle(
    directory: Path, agent_id: str, out_directory: Path, *, key_algorithm: crypto.KeyAlgorithm = "ec"
) -> AgentBundle:
    """Issue with the CA of the broker directory ``directory`` and write what the agent needs (no credential)."""
    certificate = issue_certificate(CaLayout(directory.resolve()), agent_id, key_algorithm=key_algorithm)
    return write_agent_files(certificate, out_directory)


def issued_agent_certs(layout: CaLayout) -> list[tuple[Path, x509.Certificate]]:
    """The copies in ``issued/``, by agent, oldest first.

    Validity starts are whole seconds, so two certificates issued within one second
    (an agent re-issued right after a rotation step) are ordered by when their copy
    was written.
    """
    if not layout.issued.is_dir():
        return []
    found = [(path, x509.load_pem_x509_certificate(path.read_bytes())) for path in sorted(layout.issued.glob("*.crt"))]
    return sorted(
        found,
        key=lambda item: (
            crypto.common_name(item[1]),
            item[1].not_valid_before_utc,
            item[0].stat().st_mtime_ns,
            item[1].not_valid_after_utc,
        ),
    )


def current_agent_certs(layout: CaLayout, *, now: dt.datetime | None = None) -> list[AgentHolding]:
    """Each agent's newest certificate in ``issued/`` that is neither revoked nor expired, with its CA."""
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    revoked = load_revocations(layout).serials
    newest: dict[str, x509.Certificate] = {}
    for _, cert in issued_agent_certs(layout):  # oldest first per agent: the last one wins
        if crypto.normalize_serial(cert.serial_number) not in revoked and cert.not_valid_after_utc > now:
            newest[crypto.common_name(cert)] = cert
    cas = known_cas(layout)
    return [
        AgentHolding(
            agent_id, crypto.normalize_serial(cert.serial_number), issuer_id(cert, cas), cert.not_valid_after_utc
        )
        for agent_id, cert in sorted(newest.items())
    ]


def agent_cert_issuers(layout: CaLayout) -> dict[str, str]:
    """Serial -> ``ca_id`` of every agent certificate in ``issued/``."""
    cas = known_cas(layout)
    return {crypto.normalize_serial(cert.serial_number): issuer_id(cert, cas) for _, cert in issued_agent_certs(layout)}
