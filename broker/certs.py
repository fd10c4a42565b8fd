"""Certificate lifecycle of a broker directory: leaf rotation, CA rotation with overlap, expiry, CRL.

A CA rotation has three steps, each recorded in ``ca-state.json`` so that running a
step twice changes nothing:

``single``   one CA signs and is trusted.
``overlap``  (``start_ca_rotation``) a new CA exists and is trusted next to the old
             one in ``ca-bundle.crt``; the old CA still signs. Agents get the bundle.
``switched`` (``finish_ca_rotation``) the new CA signs (it becomes ``ca.crt``/``ca.key``)
             and the server and bridge certificates are re-issued; the old CA is still
             trusted, so agents holding old-CA certificates keep connecting.
``drop_old_ca`` returns to ``single`` with the new CA only. It refuses while an agent's
             newest usable certificate (``issued/``, not revoked, not expired) is
             from the old CA, unless forced: Mosquitto would refuse that agent.

Each new CA has its own subject (``pki.create_ca``), but CAs made before that share one,
so listings name a CA by ``ca_id`` (its fingerprint prefix) and find a certificate's CA
by its signature, not by the issuer name.

Mosquitto checks client certificates against ``crl.pem`` when it exists. With a
CRL file OpenSSL needs a CRL from *every* CA that signs a client certificate, or it
refuses the client, so the file holds one CRL per trusted CA and is rewritten
whenever the trusted set changes.

No Django import at module level: everything but ``revoke_agent_certificates``
works on files only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from broker import pki
from broker.mosquitto import BrokerLayout, sync_trust_lines

if TYPE_CHECKING:
    from aegis_site.core.audit import Actor

CRL_VALIDITY_DAYS = 180
SINGLE, OVERLAP, SWITCHED = "single", "overlap", "switched"


class RotationError(RuntimeError):
    """The requested step does not follow from the recorded state."""


@dataclass(frozen=True)
class AgentHolding:
    """An agent's newest unrevoked, unexpired certificate and the CA (``ca_id``) that issued it."""

    agent_id: str
    serial: str
    issuer: str  # "" when no CA of the directory signed it
    not_after: dt.datetime


class OldCaInUse(RotationError):
    """Dropping the old CA would cut off agents whose certificate it issued."""

    def __init__(self, holders: Iterable[AgentHolding]) -> None:
        self.holders = tuple(holders)
        names = ", ".join(f"{holder.agent_id} (serial {holder.serial}, CA {holder.issuer})" for holder in self.holders)
        super().__init__(
            f"{len(self.holders)} agent(s) still hold a certificate from the old CA: {names}. "
            "Re-issue each (manage.py issue_agent_cert AGENT --dir ... --out ...) and run --drop-old-ca again, "
            "or pass --force to cut them off"
        )


@dataclass
class CaState:
    signing: str
    trusted: list[str]
    phase: str = SINGLE
    changed_at: str = ""

    @property
    def next_ca(self) -> str | None:
        return next((ca for ca in self.trusted if ca != self.signing), None) if self.phase == OVERLAP else None


@dataclass(frozen=True)
class StepResult:
    changed: bool
    state: CaState
    issued: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    cut_off: tuple[AgentHolding, ...] = ()  # agents on the dropped CA (only with force)


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


@dataclass
class RevocationList:
    crl_number: int = 0
    revoked: list[dict[str, str]] = field(default_factory=list)

    @property
    def serials(self) -> set[str]:
        return {normalize_serial(entry["serial"]) for entry in self.revoked}


def ca_id(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def known_cas(layout: BrokerLayout) -> dict[str, x509.Certificate]:
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
    return next((identifier for identifier, ca in cas.items() if pki.is_signed_by(cert, ca)), "")


def ca_standing(state: CaState, identifier: str) -> str:
    """``signing``, ``trusted (new)`` / ``trusted (old)`` during a rotation, or ``not trusted``."""
    if identifier == state.signing:
        return "signing"
    if identifier not in state.trusted:
        return "not trusted"
    return "trusted (new)" if state.phase == OVERLAP else "trusted (old)"


def normalize_serial(serial: str | int) -> str:
    """Lowercase hex without leading zeros, however an operator typed it (``0x``, colons, case)."""
    if isinstance(serial, int):
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "")
    text = text.removeprefix("0x")
    try:
        return format(int(text, 16), "x")
    except ValueError:
        raise ValueError(f"not a hexadecimal serial: {serial!r}") from None


# --- CA state -------------------------------------------------------------------


def load_state(layout: BrokerLayout) -> CaState:
    """The recorded state, or the implicit ``single`` state of a directory ``setup_broker`` wrote."""
    if layout.ca_state.exists():
        data = json.loads(layout.ca_state.read_text())
        return CaState(**data)
    ca = pki.load_issued(layout.ca_cert, layout.ca_key)
    _store_ca(layout, ca)
    return CaState(signing=ca_id(ca.certificate), trusted=[ca_id(ca.certificate)])


def load_ca(layout: BrokerLayout, identifier: str) -> pki.IssuedCertificate:
    return pki.load_issued(layout.cas / f"{identifier}.crt", layout.cas / f"{identifier}.key")


def start_ca_rotation(layout: BrokerLayout, *, key_algorithm: pki.KeyAlgorithm = "ec") -> StepResult:
    state = load_state(layout)
    if state.phase == OVERLAP:
        return StepResult(False, state, notes=("a CA rotation is already in its overlap window",))
    if state.phase == SWITCHED:
        raise RotationError("the previous rotation is not finished: run rotate_certs --drop-old-ca first")
    new_ca = pki.create_ca(key_algorithm=key_algorithm)
    _store_ca(layout, new_ca)
    state = CaState(signing=state.signing, trusted=[state.signing, ca_id(new_ca.certificate)], phase=OVERLAP)
    _apply_trust(layout, state)
    return StepResult(True, state, issued=("ca",))


def finish_ca_rotation(layout: BrokerLayout) -> StepResult:
    state = load_state(layout)
    if state.phase == SWITCHED:
        return StepResult(False, state, notes=("the new CA already signs",))
    new_id = state.next_ca
    if new_id is None:
        raise RotationError("no CA rotation in progress: run rotate_certs --ca first")
    new_ca = load_ca(layout, new_id)
    pki.write_issued(new_ca, layout.ca_cert, layout.ca_key)
    state = CaState(signing=new_id, trusted=state.trusted, phase=SWITCHED)
    issued = rotate_leaf_certs(layout, server=True, bridge=True)
    _apply_trust(layout, state)
    return StepResult(True, state, issued=tuple(issued))


def drop_old_ca(layout: BrokerLayout, *, force: bool = False) -> StepResult:
    """Trust the signing CA only; refuses (``OldCaInUse``) while agents depend on the old one, unless ``force``."""
    state = load_state(layout)
    if state.phase == SINGLE:
        return StepResult(False, state, notes=("only one CA is trusted",))
    if state.phase == OVERLAP:
        raise RotationError("the old CA still signs: run rotate_certs --finish-ca first")
    holders = agents_on_old_ca(layout, state)
    if holders and not force:
        raise OldCaInUse(holders)
    state = CaState(signing=state.signing, trusted=[state.signing], phase=SINGLE)
    _apply_trust(layout, state)
    return StepResult(True, state, cut_off=tuple(holders))


def agents_on_old_ca(layout: BrokerLayout, state: CaState) -> list[AgentHolding]:
    """Agents whose newest usable certificate a trusted CA other than the signing one issued."""
    old = set(state.trusted) - {state.signing}
    return [holding for holding in current_agent_certs(layout) if holding.issuer in old]


def agent_cert_issuers(layout: BrokerLayout) -> dict[str, str]:
    """Serial -> ``ca_id`` of every agent certificate in ``issued/``."""
    cas = known_cas(layout)
    return {normalize_serial(cert.serial_number): issuer_id(cert, cas) for _, cert in issued_agent_certs(layout)}


def current_agent_certs(layout: BrokerLayout, *, now: dt.datetime | None = None) -> list[AgentHolding]:
    """Each agent's newest certificate in ``issued/`` that is neither revoked nor expired, with its CA."""
    now = now or _now()
    revoked = load_revocations(layout).serials
    newest: dict[str, x509.Certificate] = {}
    for _, cert in issued_agent_certs(layout):  # oldest first per agent: the last one wins
        if normalize_serial(cert.serial_number) not in revoked and cert.not_valid_after_utc > now:
            newest[_common_name(cert)] = cert
    cas = known_cas(layout)
    return [
        AgentHolding(agent_id, normalize_serial(cert.serial_number), issuer_id(cert, cas), cert.not_valid_after_utc)
        for agent_id, cert in sorted(newest.items())
    ]


def _store_ca(layout: BrokerLayout, ca: pki.IssuedCertificate) -> None:
    identifier = ca_id(ca.certificate)
    if not (layout.cas / f"{identifier}.key").exists():
        pki.write_issued(ca, layout.cas / f"{identifier}.crt", layout.cas / f"{identifier}.key")


def _apply_trust(layout: BrokerLayout, state: CaState) -> None:
    """Bundle, CRL (when revocation is in use), conf lines, then the state: the state is written last."""
    bundle = b"".join((layout.cas / f"{identifier}.crt").read_bytes() for identifier in state.trusted)
    pki.write_public(layout.ca_bundle, bundle)
    if layout.crl.exists():
        write_crl(layout, state)
    sync_trust_lines(layout)
    state.changed_at = _now().isoformat()
    pki.write_public(layout.ca_state, (json.dumps(asdict(state), indent=2) + "\n").encode())


# --- leaf certificates ----------------------------------------------------------


def rotate_leaf_certs(layout: BrokerLayout, *, server: bool, bridge: bool) -> list[str]:
    """Re-issue the server and/or bridge certificate with the signing CA, keeping names and key type."""
    ca = pki.load_issued(layout.ca_cert, layout.ca_key)
    issued = []
    if server:
        old = pki.load_issued(layout.server_cert, layout.server_key)
        dns_names, ip_addresses = pki.subject_alt_names(old.certificate)
        fresh = pki.issue_server_cert(
            ca, dns_names=dns_names, ip_addresses=ip_addresses, key_algorithm=_key_algorithm(old)
        )
        pki.write_issued(fresh, layout.server_cert, layout.server_key)
        issued.append("server")
    if bridge:
        old = pki.load_issued(layout.bridge_cert, layout.bridge_key)
        pki.write_issued(
            pki.issue_bridge_cert(ca, key_algorithm=_key_algorithm(old)), layout.bridge_cert, layout.bridge_key
        )
        issued.append("bridge")
    return issued


def _key_algorithm(issued: pki.IssuedCertificate) -> pki.KeyAlgorithm:
    return "rsa" if isinstance(issued.private_key, rsa.RSAPrivateKey) else "ec"


# --- revocation -----------------------------------------------------------------


def load_revocations(layout: BrokerLayout) -> RevocationList:
    if not layout.revoked.exists():
        return RevocationList()
    return RevocationList(**json.loads(layout.revoked.read_text()))


def issued_agent_certs(layout: BrokerLayout) -> list[tuple[Path, x509.Certificate]]:
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
            _common_name(item[1]),
            item[1].not_valid_before_utc,
            item[0].stat().st_mtime_ns,
            item[1].not_valid_after_utc,
        ),
    )


def revoke_serials(layout: BrokerLayout, agent_id: str, serials: Iterable[str]) -> list[str]:
    """Add serials to ``revoked.json`` and rewrite ``crl.pem``; returns the serials that were new."""
    revocations = load_revocations(layout)
    now = _now().isoformat()
    added = [serial for serial in dict.fromkeys(map(normalize_serial, serials)) if serial not in revocations.serials]
    revocations.revoked += [{"serial": serial, "agent_id": agent_id, "revoked_at": now} for serial in added]
    pki.write_public(layout.revoked, (json.dumps(asdict(revocations), indent=2) + "\n").encode())
    write_crl(layout, load_state(layout))
    sync_trust_lines(layout)
    return added


def write_crl(
    layout: BrokerLayout, state: CaState, *, validity_days: int | None = None, now: dt.datetime | None = None
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
            .last_update(now - pki.BACKDATE)
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
    pki.write_public(layout.crl, b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls))
    pki.write_public(layout.revoked, (json.dumps(asdict(revocations), indent=2) + "\n").encode())
    return crls


def load_crls(layout: BrokerLayout) -> list[x509.CertificateRevocationList]:
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


@dataclass(frozen=True)
class RevocationResult:
    serials: tuple[str, ...]
    newly_revoked: tuple[str, ...]
    credentials_revoked: tuple[int, ...]


def revoke_agent_certificates(
    layout: BrokerLayout, agent_id: str, actor: Actor, *, serial: str | None = None
) -> RevocationResult:
    """Revoke one (``serial``) or all known certificates of an agent: registry credential(s) and the CRL.

    Known certificates are those in the broker directory's ``issued/`` copies and the
    agent's certificate credentials in the registry.
    """
    from registry.actions import revoke_credential
    from registry.models import AgentCredential, CredentialKind

    credentials = list(
        AgentCredential.objects.filter(agent_id=agent_id, kind=CredentialKind.CERTIFICATE, revoked_at__isnull=True)
    )
    known = {normalize_serial(cert.serial_number): _common_name(cert) for _, cert in issued_agent_certs(layout)}
    if serial is not None:
        wanted = normalize_serial(serial)
        owner = known.get(wanted)
        if owner is not None and owner != agent_id:
            raise ValueError(f"serial {wanted} belongs to {owner!r}, not {agent_id!r}")
        targets = [wanted]
    else:
        targets = [number for number, owner in known.items() if owner == agent_id]
        targets += [normalize_serial(c.cert_serial) for c in credentials if c.cert_serial]
        if not targets:
            raise ValueError(f"no certificate of {agent_id!r} is known here: pass --serial")
    targets = list(dict.fromkeys(targets))
    added = revoke_serials(layout, agent_id, targets)
    revoked_ids = []
    for credential in credentials:
        if serial is None or (credential.cert_serial and normalize_serial(credential.cert_serial) in targets):
            revoke_credential(credential.pk, actor)
            revoked_ids.append(credential.pk)
    return RevocationResult(tuple(targets), tuple(added), tuple(revoked_ids))


# --- expiry report --------------------------------------------------------------


def expiry_report(layout: BrokerLayout, *, now: dt.datetime | None = None) -> list[CertReport]:
    """Every CA, server, bridge and agent certificate of the directory, and the CRL's next update."""
    now = now or _now()
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
    latest = {_common_name(cert): path for path, cert in agent_certs}  # sorted: the newest wins
    for path, cert in agent_certs:
        status = "active"
        if normalize_serial(cert.serial_number) in revoked:
            status = "revoked"
        elif latest[_common_name(cert)] != path:
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
        common_name=_common_name(cert),
        serial=normalize_serial(cert.serial_number),
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


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
