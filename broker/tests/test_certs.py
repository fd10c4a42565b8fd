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
from broker import certs, mosquitto, pki
from registry.models import Agent, AgentCredential, CredentialKind


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

    result = certs.start_ca_rotation(layout)

    assert result.changed
    assert result.state.phase == certs.OVERLAP
    trusted = bundle_certs(layout.ca_bundle)
    assert len(trusted) == 2
    assert trusted[0] == old_ca
    assert current(layout.ca_cert) == old_ca
    assert layout.server_cert.read_bytes() == old_server
    assert f"cafile {layout.ca_bundle}" in layout.conf.read_text()
    agent = mosquitto.write_agent_bundle(layout.directory, "agent-x", layout.directory.parent / "agents")
    assert pki.is_signed_by(agent.issued.certificate, old_ca)
    assert len(bundle_certs(agent.ca_cert)) == 2  # the agent trusts the server before and after the switch


def test_each_rotation_step_is_idempotent_and_steps_must_come_in_order(layout):
    with pytest.raises(certs.RotationError):
        certs.finish_ca_rotation(layout)
    assert not certs.drop_old_ca(layout).changed

    started = certs.start_ca_rotation(layout)
    again = certs.start_ca_rotation(layout)
    assert not again.changed
    assert again.state.trusted == started.state.trusted
    with pytest.raises(certs.RotationError):
        certs.drop_old_ca(layout)

    certs.finish_ca_rotation(layout)
    assert not certs.finish_ca_rotation(layout).changed
    with pytest.raises(certs.RotationError):
        certs.start_ca_rotation(layout)

    assert certs.drop_old_ca(layout).state.phase == certs.SINGLE
    assert json.loads(layout.ca_state.read_text())["phase"] == certs.SINGLE


def test_after_finishing_the_new_ca_signs_server_bridge_and_new_agents(layout):
    old_ca = current(layout.ca_cert)
    started = certs.start_ca_rotation(layout)
    new_ca = certs.load_ca(layout, started.state.trusted[1]).certificate

    finished = certs.finish_ca_rotation(layout)

    assert finished.state.signing == certs.ca_id(new_ca)
    assert current(layout.ca_cert) == new_ca
    for path in (layout.server_cert, layout.bridge_cert):
        assert pki.is_signed_by(current(path), new_ca)
        assert not pki.is_signed_by(current(path), old_ca)
    assert pki.subject_alt_names(current(layout.server_cert)) == (["localhost"], ["127.0.0.1"])
    agent = mosquitto.write_agent_bundle(layout.directory, "agent-y", layout.directory.parent / "agents")
    assert pki.is_signed_by(agent.issued.certificate, new_ca)
    assert bundle_certs(layout.ca_bundle) == [old_ca, new_ca]

    certs.drop_old_ca(layout)
    assert bundle_certs(layout.ca_bundle) == [new_ca]


def test_setup_broker_keeps_the_rotated_ca_and_the_bundle(layout):
    certs.start_ca_rotation(layout)
    certs.finish_ca_rotation(layout)
    signing = current(layout.ca_cert)
    files = mosquitto.write_broker_files(layout.directory)
    assert files.created == ()
    assert files.ca.certificate == signing
    assert f"cafile {layout.ca_bundle}" in layout.conf.read_text()


def test_leaf_rotation_reissues_with_the_same_ca(layout):
    before = current(layout.server_cert), current(layout.bridge_cert)
    assert certs.rotate_leaf_certs(layout, server=True, bridge=False) == ["server"]
    assert current(layout.server_cert).serial_number != before[0].serial_number
    assert current(layout.bridge_cert) == before[1]
    assert pki.is_signed_by(current(layout.server_cert), current(layout.ca_cert))


def short_lived_agent(layout: mosquitto.BrokerLayout, agent_id: str, days: int) -> pki.IssuedCertificate:
    ca = pki.load_issued(layout.ca_cert, layout.ca_key)
    issued = pki.issue_agent_cert(ca, agent_id, validity_days=days)
    pki.write_public(layout.issued / f"{agent_id}-{issued.serial:x}.crt", issued.cert_pem)
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
    reports = certs.expiry_report(layout)
    assert {report.role for report in reports} == {"ca (signing)", "server", "bridge", "agent"}
    soon = next(report for report in reports if report.common_name == "agent-soon")
    assert soon.days_left in (4, 5)  # whole days left, rounded down
    assert certs.expiring(reports, 30) == [soon]
    assert certs.expiring(reports, 4) == []
    later = certs.expiry_report(layout, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=6))
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
    certs.revoke_serials(layout, "agent-old", [certs.normalize_serial(old.serial)])
    short_lived_agent(layout, "agent-renewed", days=2)
    short_lived_agent(layout, "agent-renewed", days=300)
    statuses = {(r.common_name, r.days_left > 100): r.status for r in certs.expiry_report(layout) if r.role == "agent"}
    assert statuses == {
        ("agent-old", False): "revoked",
        ("agent-renewed", False): "superseded",
        ("agent-renewed", True): "active",
    }
    assert run_check(layout)[0] == 0


def test_crl_lists_the_revoked_serial_signed_by_each_trusted_ca(layout):
    certs.start_ca_rotation(layout)
    issued = short_lived_agent(layout, "agent-r", days=30)
    certs.revoke_serials(layout, "agent-r", [format(issued.serial, "X")])

    crls = certs.load_crls(layout)
    state = certs.load_state(layout)
    assert len(crls) == len(state.trusted) == 2
    for crl, identifier in zip(crls, state.trusted, strict=True):
        ca = certs.load_ca(layout, identifier).certificate
        assert crl.issuer == ca.subject
        assert crl.is_signature_valid(ca.public_key())
        assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert f"crlfile {layout.crl}" in layout.conf.read_text()

    certs.finish_ca_rotation(layout)
    certs.drop_old_ca(layout)
    (crl,) = certs.load_crls(layout)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.is_signature_valid(current(layout.ca_cert).public_key())


@pytest.mark.django_db
def test_revoke_agent_cert_revokes_the_credential_audited_and_writes_the_crl(layout):
    agent_dir = layout.directory.parent / "agents"
    bundle = mosquitto.write_agent_bundle(layout.directory, "agent-z", agent_dir)
    other = mosquitto.write_agent_bundle(layout.directory, "agent-k", agent_dir)
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
    (crl,) = certs.load_crls(layout)
    assert crl.get_revoked_certificate_by_serial_number(bundle.issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(other.issued.serial) is None
    assert "restart" in out.getvalue()


@pytest.mark.django_db
def test_revoke_agent_cert_refuses_a_serial_of_another_agent_and_unknown_agents(layout):
    other = mosquitto.write_agent_bundle(layout.directory, "agent-k", layout.directory.parent / "agents")
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
    assert certs.revoke_serials(layout, "agent-f", [f"{issued.serial:x}"]) == [f"{issued.serial:x}"]
    assert certs.revoke_serials(layout, "agent-f", [f"{issued.serial:x}"]) == []
    assert Actor.system("x").label == "system:x"


@pytest.mark.parametrize("text", ["0x1A", "1a", "00:1A", " 1A "])
def test_serials_are_normalized(text):
    assert certs.normalize_serial(text) == "1a"


def test_each_new_ca_has_its_own_subject(layout):
    old_subject = current(layout.ca_cert).subject
    started = certs.start_ca_rotation(layout)
    new_subject = certs.load_ca(layout, started.state.trusted[1]).certificate.subject
    assert new_subject != old_subject
    assert all(pki.DEFAULT_CA_CN in subject.rfc4514_string() for subject in (old_subject, new_subject))


def test_only_an_agents_newest_usable_certificate_holds_back_the_drop(layout):
    agents = layout.directory.parent / "agents"
    revoked = mosquitto.write_agent_bundle(layout.directory, "agent-revoked", agents)
    mosquitto.write_agent_bundle(layout.directory, "agent-moved", agents)
    certs.start_ca_rotation(layout)
    certs.finish_ca_rotation(layout)
    # Perhaps within the second of its first certificate (validity starts are whole seconds): the newer copy wins.
    moved = mosquitto.write_agent_bundle(layout.directory, "agent-moved", agents)
    certs.revoke_serials(layout, "agent-revoked", [format(revoked.issued.serial, "X")])

    signing = certs.load_state(layout).signing
    assert [(h.agent_id, h.serial, h.issuer) for h in certs.current_agent_certs(layout)] == [
        ("agent-moved", certs.normalize_serial(moved.issued.serial), signing)
    ]
    assert certs.drop_old_ca(layout).cut_off == ()
