"""The CA and the certificates Mosquitto, the bridge and agents present to each other."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    DNSName,
    ExtensionPolicy,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from registry.pki import crypto


@pytest.fixture(scope="module")
def ca() -> crypto.IssuedCertificate:
    return crypto.create_ca()


@pytest.fixture(scope="module")
def other_ca() -> crypto.IssuedCertificate:
    return crypto.create_ca("Someone else's CA")


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def client_verifier(ca: crypto.IssuedCertificate):
    # Web PKI wants a SAN on client certificates too; Mosquitto only reads the CN.
    leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
        .build_client_verifier()
    )


def test_ca_can_sign_certificates_but_no_sub_ca(ca):
    cert = ca.certificate
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert cert.issuer == cert.subject
    assert isinstance(ca.private_key, ec.EllipticCurvePrivateKey)
    assert ca.private_key.curve.name == "secp256r1"


def test_ca_validity_and_key_algorithm_are_configurable():
    ca = crypto.create_ca(validity_days=30, key_algorithm="rsa")
    cert = ca.certificate
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=30) + crypto.BACKDATE
    assert isinstance(ca.private_key, rsa.RSAPrivateKey)
    assert ca.private_key.key_size == 2048
    agent = crypto.issue_agent_cert(ca, "rsa-agent", key_algorithm="rsa")
    assert client_verifier(ca).verify(agent.certificate, []).chain == [agent.certificate, ca.certificate]


def test_server_cert_names_localhost_and_loopback_by_default(ca):
    server = crypto.issue_server_cert(ca)
    cert = server.certificate
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert extension(cert, x509.BasicConstraints).value.ca is False
    assert extension(cert, x509.KeyUsage).value.digital_signature

    store = Store([ca.certificate])
    for host in (DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1"))):
        PolicyBuilder().store(store).build_server_verifier(host).verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(DNSName("mqtt.example.com")).verify(cert, [])


def test_server_cert_carries_the_names_asked_for(ca):
    server = crypto.issue_server_cert(ca, dns_names=["mqtt.example.com", "mosquitto"], ip_addresses=["10.0.0.5", "::1"])
    dns, ips = crypto.subject_alt_names(server.certificate)
    assert dns == ["mqtt.example.com", "mosquitto"]
    assert ips == ["10.0.0.5", "::1"]
    assert server.common_name == "mqtt.example.com"
    store = Store([ca.certificate])
    PolicyBuilder().store(store).build_server_verifier(DNSName("mosquitto")).verify(server.certificate, [])


def test_server_cert_needs_a_name(ca):
    with pytest.raises(ValueError):
        crypto.issue_server_cert(ca, dns_names=[], ip_addresses=[])


def test_agent_cert_cn_is_the_agent_id_and_only_good_for_clients(ca):
    agent = crypto.issue_agent_cert(ca, "edge-7.eu_west")
    cert = agent.certificate
    assert common_name(cert) == "edge-7.eu_west" == agent.common_name
    assert extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert extension(cert, x509.BasicConstraints).value.ca is False
    usage = extension(cert, x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert client_verifier(ca).verify(cert, []).chain == [cert, ca.certificate]
    # A client certificate must not pass as the broker's.
    server_verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(DNSName("localhost"))
    with pytest.raises(VerificationError):
        server_verifier.verify(cert, [])


def test_bridge_cert_has_the_bridge_cn(ca):
    bridge = crypto.issue_bridge_cert(ca)
    assert common_name(bridge.certificate) == crypto.BRIDGE_CN == "aegis-bridge"
    assert extension(bridge.certificate, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    client_verifier(ca).verify(bridge.certificate, [])


def test_certificate_from_another_ca_does_not_verify(ca, other_ca):
    foreign = crypto.issue_agent_cert(other_ca, "agent-a")
    with pytest.raises(VerificationError):
        client_verifier(ca).verify(foreign.certificate, [])
    assert not crypto.is_signed_by(foreign.certificate, ca.certificate)
    assert crypto.is_signed_by(foreign.certificate, other_ca.certificate)


def test_leaf_validity_never_outlives_the_ca():
    short_ca = crypto.create_ca(validity_days=10)
    agent = crypto.issue_agent_cert(short_ca, "agent-a", validity_days=365)
    assert agent.not_valid_after == short_ca.certificate.not_valid_after_utc
    default = crypto.issue_agent_cert(crypto.create_ca(), "agent-a")
    lifetime = default.certificate.not_valid_after_utc - default.certificate.not_valid_before_utc
    assert lifetime == dt.timedelta(days=crypto.LEAF_VALIDITY_DAYS) + crypto.BACKDATE


def test_serials_are_random_and_fingerprint_is_sha256_of_the_der(ca):
    first, second = crypto.issue_agent_cert(ca, "agent-a"), crypto.issue_agent_cert(ca, "agent-a")
    assert first.serial != second.serial
    assert first.serial == first.certificate.serial_number
    der = first.certificate.public_bytes(serialization.Encoding.DER)
    assert first.fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper()
    groups = first.fingerprint.split(":")
    assert len(groups) == 32
    assert all(len(group) == 2 for group in groups)


@pytest.mark.parametrize(
    "agent_id",
    [
        "",
        "Agent-1",
        "-agent",
        ".agent",
        "_agent",
        "a" * 64,
        "agent/b",
        "agent+",
        "agent#",
        "agent b",
        "agent-1\n",
        "agént",
        "aegis-bridge",
    ],
)
def test_invalid_agent_ids_are_refused(ca, agent_id):
    with pytest.raises(crypto.InvalidAgentId):
        crypto.issue_agent_cert(ca, agent_id)


@pytest.mark.parametrize("agent_id", ["a", "0", "a" * 63, "edge-7.eu_west", "aegis-bridge2"])
def test_valid_agent_ids_are_accepted(agent_id):
    assert crypto.validate_agent_id(agent_id) == agent_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_key_is_private_and_cert_is_readable(tmp_path, ca):
    agent = crypto.issue_agent_cert(ca, "agent-a")
    cert_path, key_path = tmp_path / "certs" / "agent-a.crt", tmp_path / "certs" / "agent-a.key"
    crypto.write_issued(agent, cert_path, key_path)
    assert mode(key_path) == 0o600
    assert mode(cert_path) == 0o644
    assert cert_path.read_bytes() == agent.cert_pem
    assert key_path.read_bytes() == agent.key_pem
    assert [path.name for path in cert_path.parent.iterdir() if path.name.startswith(".")] == []


def test_rewriting_over_a_world_readable_key_makes_it_private(tmp_path, ca):
    key_path = tmp_path / "agent.key"
    key_path.write_bytes(b"old")
    key_path.chmod(0o644)
    crypto.write_issued(crypto.issue_agent_cert(ca, "agent-a"), tmp_path / "agent.crt", key_path)
    assert mode(key_path) == 0o600


def test_load_issued_round_trips_and_refuses_a_foreign_key(tmp_path, ca):
    agent = crypto.issue_agent_cert(ca, "agent-a")
    crypto.write_issued(agent, tmp_path / "a.crt", tmp_path / "a.key")
    assert crypto.load_issued(tmp_path / "a.crt", tmp_path / "a.key") == agent
    crypto.write_private(tmp_path / "b.key", crypto.issue_agent_cert(ca, "agent-b").key_pem)
    with pytest.raises(ValueError):
        crypto.load_issued(tmp_path / "a.crt", tmp_path / "b.key")
