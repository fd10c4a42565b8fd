"""The project's own certificate authority for MQTT over TLS.

Mosquitto trusts every certificate its CA bundle signed, and with
``use_identity_as_username`` the certificate's CN *is* the MQTT username the ACL
matches. So the CN rules live here, at the one place certificates are made: an
agent CN must be a valid agent id and can never be the bridge's name, which the
ACL grants ``aegis/#``.

No Django import: ops scripts (and tests) use this module as is.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AGENT_ID_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,62}\Z")
BRIDGE_CN = "aegis-bridge"
# CAs made before each CA got its own subject are all called this; they keep working.
DEFAULT_CA_CN = "Aegis Event Bus CA"
ORGANIZATION = "Aegis Event Bus"

CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 397
# Tolerates a peer whose clock is a little behind ours.
BACKDATE = dt.timedelta(minutes=5)

KeyAlgorithm = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class InvalidAgentId(ValueError):
    """The name cannot be an agent's certificate CN (and so its MQTT username)."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, as PEM, with what a registry stores about it."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str
    serial: int
    common_name: str
    not_valid_after: dt.datetime

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def private_key(self) -> PrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError(f"unsupported key type {type(key).__name__}")
        return key


def validate_agent_id(agent_id: str) -> str:
    if not AGENT_ID_RE.match(agent_id):
        raise InvalidAgentId(f"invalid agent id {agent_id!r}: must match {AGENT_ID_RE.pattern}")
    if agent_id == BRIDGE_CN:
        raise InvalidAgentId(f"{BRIDGE_CN!r} is reserved for the bridge")
    return agent_id


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def generate_key(algorithm: KeyAlgorithm = "ec") -> PrivateKey:
    if algorithm == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def create_ca(
    common_name: str | None = None,
    *,
    validity_days: int = CA_VALIDITY_DAYS,
    key_algorithm: KeyAlgorithm = "ec",
) -> IssuedCertificate:
    """A self-signed CA; by default its CN carries its date and serial, so the old and new CA of a rotation differ."""
    key = generate_key(key_algorithm)
    now = _now()
    serial = x509.random_serial_number()
    name = _name(common_name or f"{DEFAULT_CA_CN} {now:%Y-%m-%d} {format(serial, 'x')[:8]}")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _bundle(builder.sign(key, hashes.SHA256()), key)


def issue_server_cert(
    ca: IssuedCertificate,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    validity_days: int = LEAF_VALIDITY_DAYS,
    key_algorithm: KeyAlgorithm = "ec",
) -> IssuedCertificate:
    """Mosquitto's certificate; clients check the host they dial against its SANs."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    return _issue_leaf(ca, common_name, ExtendedKeyUsageOID.SERVER_AUTH, validity_days, key_algorithm, sans)


def issue_bridge_cert(
    ca: IssuedCertificate,
    *,
    validity_days: int = LEAF_VALIDITY_DAYS,
    key_algorithm: KeyAlgorithm = "ec",
) -> IssuedCertificate:
    return _issue_leaf(ca, BRIDGE_CN, ExtendedKeyUsageOID.CLIENT_AUTH, validity_days, key_algorithm)


def issue_agent_cert(
    ca: IssuedCertificate,
    agent_id: str,
    *,
    validity_days: int = LEAF_VALIDITY_DAYS,
    key_algorithm: KeyAlgorithm = "ec",
) -> IssuedCertificate:
    validate_agent_id(agent_id)
    return _issue_leaf(ca, agent_id, ExtendedKeyUsageOID.CLIENT_AUTH, validity_days, key_algorithm)


def is_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


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


def subject_alt_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses (as text) the certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    return sans.get_values_for_type(x509.DNSName), ips


def load_issued(cert_path: Path, key_path: Path) -> IssuedCertificate:
    cert_pem = cert_path.read_bytes()
    key_pem = key_path.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return _describe(cert, key_pem)


def write_issued(issued: IssuedCertificate, cert_path: Path, key_path: Path) -> None:
    """Write the pair atomically; the key is never readable by others, even briefly."""
    write_private(key_path, issued.key_pem)
    write_public(cert_path, issued.cert_pem)


def write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _issue_leaf(
    ca: IssuedCertificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    validity_days: int,
    key_algorithm: KeyAlgorithm,
    sans: Sequence[x509.GeneralName] = (),
) -> IssuedCertificate:
    ca_cert = ca.certificate
    ca_key = ca.private_key
    key = generate_key(key_algorithm)
    now = _now()
    # A leaf outliving its CA would fail verification at the end anyway; say so up front.
    not_after = min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return _bundle(builder.sign(ca_key, hashes.SHA256()), key)


def _key_usage(*, cert_sign: bool = False, rsa_key: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=rsa_key,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _bundle(cert: x509.Certificate, key: PrivateKey) -> IssuedCertificate:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _describe(cert, key_pem)


def _describe(cert: x509.Certificate, key_pem: bytes) -> IssuedCertificate:
    return IssuedCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        fingerprint=fingerprint_sha256(cert),
        serial=cert.serial_number,
        common_name=common_name(cert),
        not_valid_after=cert.not_valid_after_utc,
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so a key is private from its first byte.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        _keep_owner(path, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _keep_owner(path: Path, tmp_name: str) -> None:
    """A replaced file keeps its owner: a rotated ``server.key`` stays readable by the user Mosquitto runs as
    (``setup_broker --user``), a rotated ``bridge.key`` by the bridge's user. Only root can give files away."""
    if os.geteuid() != 0 or not path.exists():
        return
    old = path.stat()
    os.chown(tmp_name, old.st_uid, old.st_gid)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
