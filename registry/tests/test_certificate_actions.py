"""Issuing and revoking an agent's certificate: the CA's files and the registry's credential, as one action each."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from registry import actions
from registry.models import Agent, AgentCredential, CredentialKind
from registry.pki import crypto, revocation
from registry.pki.layout import CaLayout, trust_changed

pytestmark = pytest.mark.django_db

OPERATOR = Actor.system("test")


@pytest.fixture
def layout(tmp_path: Path) -> CaLayout:
    """A directory with a CA and nothing else: the registry needs no broker to issue certificates."""
    layout = CaLayout(tmp_path / "ca")
    crypto.write_issued(crypto.create_ca(), layout.ca_cert, layout.ca_key)
    return layout


def test_issuing_records_an_audited_credential_and_keeps_a_public_copy(layout: CaLayout) -> None:
    result = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)

    issued = result.certificate.issued
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    assert crypto.is_signed_by(issued.certificate, ca)
    assert issued.common_name == "edge-1"
    assert Agent.objects.filter(pk="edge-1").exists()
    credential = AgentCredential.objects.get(agent_id="edge-1", kind=CredentialKind.CERTIFICATE)
    assert credential == result.credential
    assert (credential.cert_serial, credential.cert_fingerprint) == (f"{issued.serial:x}", issued.fingerprint)
    assert credential.expires_at == issued.not_valid_after
    row = AuditEvent.objects.get(action="credential.issue", object_id="edge-1")
    assert (row.actor_label, row.data["serial"]) == ("system:test", credential.cert_serial)
    assert [path.name for path in layout.issued.iterdir()] == [f"edge-1-{issued.serial:x}.crt"]
    assert b"PRIVATE KEY" not in (layout.issued / f"edge-1-{issued.serial:x}.crt").read_bytes()


def test_without_an_out_directory_the_agent_files_are_only_returned(layout: CaLayout, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))

    result = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)

    assert result.bundle is None
    files = result.certificate.files
    assert sorted(files) == ["ca.crt", "edge-1.crt", "edge-1.key"]
    assert files["ca.crt"] == layout.ca_cert.read_bytes()
    assert b"PRIVATE KEY" in files["edge-1.key"]
    written = set(tmp_path.rglob("*")) - set(before)
    assert {path.relative_to(layout.directory).parts[0] for path in written} == {"issued"}


def test_with_an_out_directory_the_agent_files_are_written_the_key_private(layout: CaLayout, tmp_path: Path) -> None:
    result = actions.issue_agent_certificate(layout, "edge-1", OPERATOR, out_directory=tmp_path / "out")

    assert result.bundle is not None
    loaded = crypto.load_issued(result.bundle.cert, result.bundle.key)
    assert loaded.serial == result.certificate.issued.serial
    assert stat.S_IMODE(result.bundle.key.stat().st_mode) == 0o600
    assert result.bundle.ca_cert.read_bytes() == layout.ca_cert.read_bytes()


def test_a_name_that_cannot_be_a_cn_issues_and_records_nothing(layout: CaLayout) -> None:
    with pytest.raises(crypto.InvalidAgentId):
        actions.issue_agent_certificate(layout, crypto.BRIDGE_CN, OPERATOR)

    assert not AgentCredential.objects.exists()
    assert not layout.issued.exists()


def test_revoking_an_agent_revokes_its_credentials_and_lists_its_serials_on_the_crl(layout: CaLayout) -> None:
    first = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)
    second = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)
    other = actions.issue_agent_certificate(layout, "edge-2", OPERATOR)
    announced: list[Any] = []

    def receiver(sender: object, layout: CaLayout, **kwargs: object) -> None:
        announced.append(layout)

    trust_changed.connect(receiver)
    try:
        result = actions.revoke_agent_certificates(layout, "edge-1", Actor.system("revoker"))
    finally:
        trust_changed.disconnect(receiver)

    serials = {f"{first.certificate.issued.serial:x}", f"{second.certificate.issued.serial:x}"}
    assert set(result.serials) == set(result.newly_revoked) == serials
    assert set(result.credentials_revoked) == {first.credential.pk, second.credential.pk}
    (crl,) = revocation.load_crls(layout)
    assert {format(entry.serial_number, "x") for entry in crl} == serials
    assert AgentCredential.objects.get(pk=other.credential.pk).revoked_at is None
    assert AuditEvent.objects.filter(action="credential.revoke", object_id="edge-1").count() == 2
    assert announced == [layout]  # the broker follows: mosquitto.conf gets its crlfile line


def test_revoking_one_serial_leaves_the_agents_other_certificates(layout: CaLayout) -> None:
    first = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)
    second = actions.issue_agent_certificate(layout, "edge-1", OPERATOR)

    result = actions.revoke_agent_certificates(layout, "edge-1", OPERATOR, serial=first.credential.cert_serial)

    assert result.credentials_revoked == (first.credential.pk,)
    assert AgentCredential.objects.get(pk=second.credential.pk).revoked_at is None
    assert revocation.load_revocations(layout).serials == {first.credential.cert_serial}


def test_revoking_refuses_another_agents_serial_and_an_agent_without_certificates(layout: CaLayout) -> None:
    other = actions.issue_agent_certificate(layout, "edge-2", OPERATOR)

    with pytest.raises(ValueError, match="belongs to 'edge-2'"):
        actions.revoke_agent_certificates(layout, "edge-1", OPERATOR, serial=other.credential.cert_serial)
    with pytest.raises(ValueError, match="pass --serial"):
        actions.revoke_agent_certificates(layout, "edge-1", OPERATOR)
    assert not layout.crl.exists()
    assert AgentCredential.objects.get(pk=other.credential.pk).revoked_at is None
