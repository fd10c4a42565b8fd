"""Revoked serials (``revoked.json``) and the CRL (``crl.pem``) of a broker directory.

Mosquitto checks client certificates against ``crl.pem`` when it exists. With a
CRL file OpenSSL needs a CRL from *every* CA that signs a client certificate, or it
refuses the client, so the file holds one CRL per trusted CA and is rewritten
whenever the trusted set changes (``registry.pki.rotation``).

Files only; the registry's credentials are revoked with them by
``registry.actions.revoke_agent_certificates``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from registry.pki import crypto
from registry.pki.authorities import CaState, load_ca, load_state
from registry.pki.layout import CaLayout, announce_trust_change

CRL_VALIDITY_DAYS = 180


@dataclass
class RevocationList:
    crl_number: int = 0
    revoked: list[dict[str, str]] = field(default_factory=list)

    @property
    def serials(self) -> set[str]:
        return {crypto.normalize_serial(entry["serial"]) for entry in self.revoked}


def load_revocations(layout: CaLayout) -> RevocationList:
    if not layout.revoked.exists():
        return RevocationList()
    return RevocationList(**json.loads(layout.revoked.read_text()))


def revoke_serials(layout: CaLayout, agent_id: str, serials: Iterable[str]) -> list[str]:
    """Add serials to ``revoked.json`` and rewrite ``crl.pem``; returns the serials that were new."""
    revocations = load_revocations(layout)
    now = _now().isoformat()
    wanted = dict.fromkeys(map(crypto.normalize_serial, serials))
    added = [serial for serial in wanted if serial not in revocations.serials]
    revocations.revoked += [{"serial": serial, "agent_id": agent_id, "revoked_at": now} for serial in added]
    crypto.write_public(layout.revoked, (json.dumps(asdict(revocations), indent=2) + "\n").encode())
    write_crl(layout, load_state(layout))
    announce_trust_change(layout)
    return added


def write_crl(
    layout: CaLayout, state: CaState, *, validity_days: int | None = None, now: dt.datetime | None = None
) -> list[x509.CertificateRevocationList]:
    """One CRL per trusted CA, concatenated in ``crl.pem``.

    Serials are random 159-bit numbers, so listing a revoked serial in every CA's
    CRL revokes exactly that certificate, whichever CA issued it.
    """
    revocations = load_revocations(layout)
    revocations.crl_number += 1
    now = now or _now()
    days = validity_days if validity_days is not None else crl_validity_days()
    crls = []
    for identifier in state.trusted:
        ca = load_ca(layout, identifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.certificate.subject)
            .last_update(now - crypto.BACKDATE)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(revocations.crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
            )
        )
        for entry in revocations.revoked:
            revoked_at = dt.datetime.fromisoformat(entry["revoked_at"])
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(revoked_at)
                .build()
            )
        crls.append(builder.sign(ca.private_key, hashes.SHA256()))
    crypto.write_public(layout.crl, b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls))
    crypto.write_public(layout.revoked, (json.dumps(asdict(revocations), indent=2) + "\n").encode())
    return crls


def load_crls(layout: CaLayout) -> list[x509.CertificateRevocationList]:
    data = layout.crl.read_bytes()
    marker = b"-----BEGIN X509 CRL-----"
    return [x509.load_pem_x509_crl(marker + part) for part in data.split(marker)[1:]]


def crl_validity_days() -> int:
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        try:
            return int(getattr(settings, "AEGIS_CRL_VALIDITY_DAYS", CRL_VALIDITY_DAYS))
        except ImproperlyConfigured:  # used without Django settings, e.g. by an ops script
            return CRL_VALIDITY_DAYS
    except ImportError:
        return CRL_VALIDITY_DAYS


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
