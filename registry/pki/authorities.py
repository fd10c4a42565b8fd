"""The CAs of a broker directory: which exist (``cas/``), which signs and which are trusted (``ca-state.json``).

Each new CA has its own subject (``crypto.create_ca``), but CAs made before that share
one, so listings name a CA by ``ca_id`` (its fingerprint prefix) and find a
certificate's CA by its signature, not by the issuer name. The phases are those of a
CA rotation (``registry.pki.rotation``).

No Django import: files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from registry.pki import crypto
from registry.pki.layout import CaLayout

SINGLE, OVERLAP, SWITCHED = "single", "overlap", "switched"


@dataclass
class CaState:
    signing: str
    trusted: list[str]
    phase: str = SINGLE
    changed_at: str = ""

    @property
    def next_ca(self) -> str | None:
        return next((ca for ca in self.trusted if ca != self.signing), None) if self.phase == OVERLAP else None


def ca_id(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def known_cas(layout: CaLayout) -> dict[str, x509.Certificate]:
    """Every CA the directory has, trusted or dropped, by ``ca_id``: ``cas/*.crt`` and ``ca.crt``."""
    paths = sorted(layout.cas.glob("*.crt")) if layout.cas.is_dir() else []
    found: dict[str, x509.Certificate] = {}
    for path in [*paths, layout.ca_cert]:
        if path.exists():
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            found.setdefault(ca_id(cert), cert)
    return found


def issuer_id(cert: x509.Certificate, cas: dict[str, x509.Certificate]) -> str:
    """The ``ca_id`` whose key signed ``cert`` (CAs of the same subject are told apart by signature)."""
    return next((identifier for identifier, ca in cas.items() if crypto.is_signed_by(cert, ca)), "")


def ca_standing(state: CaState, identifier: str) -> str:
    """``signing``, ``trusted (new)`` / ``trusted (old)`` during a rotation, or ``not trusted``."""
    if identifier == state.signing:
        return "signing"
    if identifier not in state.trusted:
        return "not trusted"
    return "trusted (new)" if state.phase == OVERLAP else "trusted (old)"


def load_state(layout: CaLayout) -> CaState:
    """The recorded state, or the implicit ``single`` state of a directory ``setup_broker`` wrote."""
    if layout.ca_state.exists():
        data = json.loads(layout.ca_state.read_text())
        return CaState(**data)
    ca = crypto.load_issued(layout.ca_cert, layout.ca_key)
    store_ca(layout, ca)
    return CaState(signing=ca_id(ca.certificate), trusted=[ca_id(ca.certificate)])


def load_ca(layout: CaLayout, identifier: str) -> crypto.IssuedCertificate:
    return crypto.load_issued(layout.cas / f"{identifier}.crt", layout.cas / f"{identifier}.key")


def store_ca(layout: CaLayout, ca: crypto.IssuedCertificate) -> None:
    identifier = ca_id(ca.certificate)
    if not (layout.cas / f"{identifier}.key").exists():
        crypto.write_issued(ca, layout.cas / f"{identifier}.crt", layout.cas / f"{identifier}.key")
