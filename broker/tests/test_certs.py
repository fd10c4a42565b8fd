"""Certificate lifecycle of a broker directory: rotation steps, expiry report, CRL."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from cryptography import x509
from django.core.management import call_command
from django.core.management.base import CommandError

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from broker import mosquitto
from registry.models import Agent, AgentCredential, CredentialKind
from registry.pki import authorities, crypto, expiry, revocation, rotation
from registry.pki.agents import current_agent_certs, write_agent_bundle


@pytest.fixture
def layout(tmp_path) -> mosquitto.BrokerLayout:
    return mosquitto.write_broker_files(tmp_path / "broker").layout


def bundle_certs(path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def current(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_starting_a_ca_rotation_trusts_old_and_new_while_the_old_ca_still_signs(layout):
    old_ca = current(layout.ca_cert)
    old_server = layout.server_cert.read_bytes()

    result = rotation.start_ca_rotation(layout)

    assert result.changed
    assert result.state.phase == authorities.OVERLAP
    trusted = bundle_certs(layout.ca_bundle)
    assert len(trusted) == 2
    assert trusted[0] == old_ca
    assert current(layout.ca_cert) == old_ca
    assert layout.server_cert.read_bytes() == old_server
    assert f"cafile {layout.ca_bundle}" in layout.conf.read_text()
    agent = write_agent_bundle(layout.directory, "agent-x", layout.directory.parent / "agents")
    assert crypto.is_signed_by(agent.issued.certificate, old_ca)
    assert len(bundle_certs(agent.ca_cert)) == 2  # the agent trusts the server before and after the switch


def test_each_rotation_step_is_idempotent_and_steps_must_come_in_order(layout):
    with pytest.raises(rotation.RotationError):
        rotation.finish_ca_rotation(layout)
    assert not rotation.drop_old_ca(layout).changed

    started = rotation.start_ca_rotation(layout)
    again = rotation.start_ca_rotation(layout)
    assert not again.changed
    assert again.state.trusted == started.state.trusted
    with pytest.raises(rotation.RotationError):
        rotation.drop_old_ca(layout)

    rotation.finish_ca_rotation(layout)
    assert not rotation.finish_ca_rotation(layout).changed
    with pytest.raises(rotation.RotationError):
        rotation.start_ca_rotation(layout)

    assert rotation.drop_old_ca(layout).state.phase == authorities.SINGLE
    assert json.loads(layout.ca_state.read_text())["phase"] == authorities.SINGLE


def test_after_finishing_the_new_ca_signs_server_bridge_and_new_agents(layout):
    old_ca = current(layout.ca_cert)
    started = rotation.start_ca_rotation(layout)
    new_ca = authorities.load_ca(layout, started.state.trusted[1]).certificate

    finished = rotation.finish_ca_rotation(layout)

    assert finished.state.signing == authorities.ca_id(new_ca)
    assert current(layout.ca_cert) == new_ca
    for path in (layout.server_cert, layout.bridge_cert):
        assert crypto.is_signed_by(current(path), new_ca)
        assert not crypto.is_signed_by(current(path), old_ca)
    assert crypto.subject_alt_names(current(layout.server_cert)) == (["localhost"], ["127.0.0.1"])
    agent = write_agent_bundle(layout.directory, "agent-y", layout.directory.parent / "agents")
    assert crypto.is_signed_by(agent.issued.certificate, new_ca)
    assert bundle_certs(layout.ca_bundle) == [old_ca, new_ca]

    rotation.drop_old_ca(layout)
    assert bundle_certs(layout.ca_bundle) == [new_ca]


def test_setup_broker_keeps_the_rotated_ca_and_the_bundle(layout):
    rotation.start_ca_rotation(layout)
    rotation.finish_ca_rotation(layout)
    signing = current(layout.ca_cert)
    files = mosquitto.write_broker_files(layout.directory)
    assert files.created == ()
    assert files.ca.certificate == signing
    assert f"cafile {layout.ca_bundle}" in layout.conf.read_text()


def test_leaf_rotation_reissues_with_the_same_ca(layout):
    before = current(layout.server_cert), current(layout.bridge_cert)
    assert rotation.rotate_leaf_certs(layout, server=True, bridge=False) == ["server"]
    assert current(layout.server_cert).serial_number != before[0].serial_number
    assert current(layout.bridge_cert) == before[1]
    assert crypto.is_signed_by(current(layout.server_cert), current(layout.ca_cert))


def short_lived_agent(layout: mosquitto.BrokerLayout, agent_id: str, days: int) -> crypto.IssuedCertificate:
    ca = crypto.load_issued(layout.ca_cert, layout.ca_key)
    issued = crypto.issue_agent_cert(ca, agent_id, validity_days=days)
    crypto.write_public(layout.issued / f"{agent_id}-{issued.serial:x}.crt", issued.cert_pem)
    return issued


def run_check(layout, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("check_certs", "--dir", str(layout.directory), *extra, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_expiry_report_flags_what_expires_within_the_threshold(layout):
    short_lived_agent(layout, "agent-soon", days=5)
    reports = expiry.expiry_report(layout)
    assert {report.role for report in reports} == {"ca (signing)", "server", "bridge", "agent"}
    soon = next(report for report in reports if report.common_name == "agent-soon")
    assert soon.days_left in (4, 5)  # whole days left, rounded down
    assert expiry.expiring(reports, 30) == [soon]
    assert expiry.expiring(reports, 4) == []
    later = expiry.expiry_report(layout, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=6))
    assert next(report for report in later if report.common_name == "agent-soon").days_left < 0


def test_check_certs_exits_1_when_something_expires_within_days(layout):
    short_lived_agent(layout, "agent-soon", days=5)
    code, output = run_check(layout)
    assert code == 1
    assert "agent-soon" in output
    assert "EXPIRING" in output
    code, _ = run_check(layout, "--days", "3")
    assert code == 0
    code, output = run_check(layout, "--days", "10", "--json")
    document = json.loads(output)
    assert code == 1
    assert not document["ok"]
    assert [entry["common_name"] for entry in document["certificates"] if entry["path"] in document["expiring"]] == [
        "agent-soon"
    ]


def test_revoked_and_superseded_agent_certificates_do_not_fail_the_check(layout):
    old = short_lived_agent(layout, "agent-old", days=5)
    revocation.revoke_serials(layout, "agent-old", [crypto.normalize_serial(old.serial)])
    short_lived_agent(layout, "agent-renewed", days=2)
    short_lived_agent(layout, "agent-renewed", days=300)
    statuses = {(r.common_name, r.days_left > 100): r.status for r in expiry.expiry_report(layout) if r.role == "agent"}
    assert statuses == {
        ("agent-old", False): "revoked",
        ("agent-renewed", False): "superseded",
        ("agent-renewed", True): "active",
    }
    assert run_check(layout)[0] == 0


def test_crl_lists_the_revoked_serial_signed_by_each_trusted_ca(layout):
    rotation.start_ca_rotation(layout)
    issued = short_lived_agent(layout, "agent-r", days=30)
    revocation.revoke_serials(layout, "agent-r", [format(issued.serial, "X")])

    crls = revocation.load_crls(layout)
    state = authorities.load_state(layout)
    assert len(crls) == len(state.trusted) == 2
    for crl, identifier in zip(crls, state.trusted, strict=True):
        ca = authorities.load_ca(layout, identifier).certificate
        assert crl.issuer == ca.subject
        assert crl.is_signature_valid(ca.public_key())
        assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert f"crlfile {layout.crl}" in layout.conf.read_text()

    rotation.finish_ca_rotation(layout)
    rotation.drop_old_ca(layout)
    (crl,) = revocation.load_crls(layout)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.is_signature_valid(current(layout.ca_cert).public_key())


@pytest.mark.django_db
def test_revoke_agent_cert_revokes_the_credential_audited_and_writes_the_crl(layout):
    agent_dir = layout.directory.parent / "agents"
    bundle = write_agent_bundle(layout.directory, "agent-z", agent_dir)
    other = write_agent_bundle(layout.directory, "agent-k", agent_dir)
    agent = Agent.objects.create(pk="agent-z")
    credential = AgentCredential.objects.create(
        agent=agent,
        kind=CredentialKind.CERTIFICATE,
        cert_fingerprint=bundle.issued.fingerprint,
        cert_serial=format(bundle.issued.serial, "x"),
    )
    out = io.StringIO()
    call_command("revoke_agent_cert", "agent-z", "--dir", str(layout.directory), stdout=out)

    credential.refresh_from_db()
    assert credential.revoked_at is not None
    assert AuditEvent.objects.filter(action="credential.revoke", object_id="agent-z").count() == 1
    (crl,) = revocation.load_crls(layout)
    assert crl.get_revoked_certificate_by_serial_number(bundle.issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(other.issued.serial) is None
    assert "restart" in out.getvalue()


@pytest.mark.django_db
def test_revoke_agent_cert_refuses_a_serial_of_another_agent_and_unknown_agents(layout):
    other = write_agent_bundle(layout.directory, "agent-k", layout.directory.parent / "agents")
    with pytest.raises(CommandError, match="belongs to 'agent-k'"):
        call_command(
            "revoke_agent_cert", "agent-z", "--dir", str(layout.directory), "--serial", f"{other.issued.serial:x}"
        )
    with pytest.raises(CommandError, match="pass --serial"):
        call_command("revoke_agent_cert", "agent-nobody", "--dir", str(layout.directory))
    assert not layout.crl.exists()


def test_revocation_works_without_django_actor_for_files(layout):
    # The file side alone (as an ops script would use it) needs no database.
    issued = short_lived_agent(layout, "agent-f", days=30)
    assert revocation.revoke_serials(layout, "agent-f", [f"{issued.serial:x}"]) == [f"{issued.serial:x}"]
    assert revocation.revoke_serials(layout, "agent-f", [f"{issued.serial:x}"]) == []
    assert Actor.system("x").label == "system:x"


@pytest.mark.parametrize("text", ["0x1A", "1a", "00:1A", " 1A "])
def test_serials_are_normalized(text):
    assert crypto.normalize_serial(text) == "1a"


def test_each_new_ca_has_its_own_subject(layout):
    old_subject = current(layout.ca_cert).subject
    started = rotation.start_ca_rotation(layout)
    new_subject = authorities.load_ca(layout, started.state.trusted[1]).certificate.subject
    assert new_subject != old_subject
    assert all(crypto.DEFAULT_CA_CN in subject.rfc4514_string() for subject in (old_subject, new_subject))


def test_only_an_agents_newest_usable_certificate_holds_back_the_drop(layout):
    agents = layout.directory.parent / "agents"
    revoked = write_agent_bundle(layout.directory, "agent-revoked", agents)
    write_agent_bundle(layout.directory, "agent-moved", agents)
    rotation.start_ca_rotation(layout)
    rotation.finish_ca_rotation(layout)
    # Perhaps within the second of its first certificate (validity starts are whole seconds): the newer copy wins.
    moved = write_agent_bundle(layout.directory, "agent-moved", agents)
    revocation.revoke_serials(layout, "agent-revoked", [format(revoked.issued.serial, "X")])

    signing = authorities.load_state(layout).signing
    assert [(h.agent_id, h.serial, h.issuer) for h in current_agent_certs(layout)] == [
        ("agent-moved", crypto.normalize_serial(moved.issued.serial), signing)
    ]
    assert rotation.drop_old_ca(layout).cut_off == ()
