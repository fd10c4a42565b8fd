"""CA rotation and revocation against a real Mosquitto running the generated TLS configuration."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from django.core.management import call_command
from django.core.management.base import CommandError

from broker import mosquitto
from registry.pki import authorities, crypto, rotation
from registry.pki.agents import write_agent_bundle
from tests.test_broker_security import MOSQUITTO, Credentials, Probe, free_port, stop, wait_for_port

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")


class RunningBroker:
    """One broker directory and its Mosquitto, which the test restarts after each trust change."""

    def __init__(self, root: Path, *, legacy_ca: bool = False) -> None:
        self.root = root
        self.log = root / "mosquitto.log"
        self.port = free_port()
        run_as = "root" if os.geteuid() == 0 else None
        if legacy_ca:  # a deployment set up before each CA got its own subject: setup_broker keeps its CA
            ca = crypto.create_ca(crypto.DEFAULT_CA_CN)
            crypto.write_issued(ca, root / "broker" / "ca.crt", root / "broker" / "ca.key")
        files = mosquitto.write_broker_files(root / "broker", port=self.port, log_file=self.log, run_as_user=run_as)
        self.layout = files.layout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(mosquitto.mosquitto_command(self.layout, MOSQUITTO), cwd=self.root)
        assert wait_for_port(self.process, self.port), f"mosquitto did not start:\n{self.log.read_text()[-2000:]}"

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def issue(self, agent_id: str, out: str = "") -> tuple[Credentials, Path, crypto.IssuedCertificate]:
        bundle = write_agent_bundle(self.layout.directory, agent_id, self.root / (out or agent_id))
        return Credentials(bundle.cert, bundle.key), bundle.ca_cert, bundle.issued


@pytest.fixture
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    broker = RunningBroker(tmp_path, legacy_ca=getattr(request, "param", "") == "legacy CA")
    yield broker
    broker.stop()


@pytest.fixture
def connects(running: RunningBroker) -> Iterator[Callable[[str, Credentials, Path], bool]]:
    probes: list[Probe] = []

    def attempt(client_id: str, credentials: Credentials, trust: Path) -> bool:
        probe = Probe(client_id)
        probes.append(probe)
        target = SimpleNamespace(host="127.0.0.1", port=running.port, layout=SimpleNamespace(ca_cert=trust))
        accepted = probe.start(target, credentials)
        probe.stop()
        return accepted

    yield attempt
    for probe in probes:
        probe.client.loop_stop()


def test_agents_of_the_old_and_the_new_ca_both_connect_during_the_overlap(running, connects):
    old_agent, old_agent_trust, _ = running.issue("agent-old")
    rotation.start_ca_rotation(running.layout)
    running.start()
    # Not yet redistributed: the agent still trusts only the old CA, which signs the server.
    assert connects("agent-old", old_agent, old_agent_trust)
    assert connects("agent-old", old_agent, running.layout.ca_bundle)

    rotation.finish_ca_rotation(running.layout)
    running.restart()
    new_agent, new_agent_trust, new_issued = running.issue("agent-new")
    new_ca = crypto.load_issued(running.layout.ca_cert, running.layout.ca_key).certificate
    assert crypto.is_signed_by(new_issued.certificate, new_ca)
    assert connects("agent-new", new_agent, new_agent_trust)
    assert connects("agent-old", old_agent, running.layout.ca_bundle)  # old-CA certificate, bundle as trust
    assert not connects("agent-old", old_agent, old_agent_trust)  # it must take the bundle before the switch

    rotation.drop_old_ca(running.layout, force=True)  # agent-old still holds its old-CA certificate
    running.restart()
    assert not connects("agent-old", old_agent, running.layout.ca_bundle)
    assert connects("agent-new", new_agent, running.layout.ca_bundle)


@pytest.mark.django_db
def test_a_revoked_agent_certificate_is_refused_after_the_restart(running, connects):
    revoked, trust, _ = running.issue("agent-r")
    kept, _, _ = running.issue("agent-k")
    running.start()
    assert connects("agent-r", revoked, trust)

    call_command("revoke_agent_cert", "agent-r", "--dir", str(running.layout.directory))
    assert f"crlfile {running.layout.crl}" in running.layout.conf.read_text()
    running.restart()

    assert not connects("agent-r", revoked, trust)
    assert connects("agent-k", kept, trust)
    assert connects("aegis-bridge", Credentials(running.layout.bridge_cert, running.layout.bridge_key), trust)


@pytest.mark.django_db
def test_revocation_during_a_ca_overlap_still_admits_agents_of_both_cas(running, connects):
    old_agent, _, _ = running.issue("agent-old")
    revoked, _, _ = running.issue("agent-r")
    rotation.start_ca_rotation(running.layout)
    rotation.finish_ca_rotation(running.layout)
    new_agent, trust, _ = running.issue("agent-new")
    call_command("revoke_agent_cert", "agent-r", "--dir", str(running.layout.directory))
    running.start()

    assert not connects("agent-r", revoked, trust)
    assert connects("agent-old", old_agent, trust)  # the old CA has its own (empty of it) CRL in crl.pem
    assert connects("agent-new", new_agent, trust)


def switched_with_one_agent_per_ca(running: RunningBroker) -> tuple[Credentials, Path, Credentials, Path]:
    """Agent B got its certificate before the CA rotation (and the bundle as its trust during the overlap,
    as the procedure says), agent A its certificate after the new CA took over signing."""
    b_cert, _, _ = running.issue("agent-b")
    rotation.start_ca_rotation(running.layout)
    rotation.finish_ca_rotation(running.layout)
    a_cert, a_trust, _ = running.issue("agent-a")
    running.start()
    return a_cert, a_trust, b_cert, running.layout.ca_bundle


def manage(name: str, running: RunningBroker, *args: str) -> str:
    out = io.StringIO()
    call_command(name, "--dir", str(running.layout.directory), *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("running", ["legacy CA"], indirect=True)
def test_check_certs_lists_agents_by_issuing_ca_and_drop_waits_for_the_last_one(running, connects):
    a_cert, a_trust, b_cert, b_trust = switched_with_one_agent_per_ca(running)
    state = authorities.load_state(running.layout)
    (old_id,) = [identifier for identifier in state.trusted if identifier != state.signing]
    new_id = state.signing
    old_subject = x509.load_pem_x509_certificate((running.layout.cas / f"{old_id}.crt").read_bytes()).subject
    new_subject = x509.load_pem_x509_certificate(running.layout.ca_cert.read_bytes()).subject
    assert old_subject.rfc4514_string() == f"CN={crypto.DEFAULT_CA_CN},O={crypto.ORGANIZATION}"  # the kept legacy CA
    assert new_subject != old_subject

    by_ca = json.loads(manage("check_certs", running, "--json"))["agents_by_ca"]
    assert by_ca[old_id] == {
        "subject": old_subject.rfc4514_string(),
        "standing": "trusted (old)",
        "agents": ["agent-b"],
    }
    assert by_ca[new_id]["agents"] == ["agent-a"]
    table = manage("check_certs", running, "--by-ca")
    assert any(line.split()[:1] == [old_id] and line.endswith("agent-b") for line in table.splitlines()), table
    agent_rows = [line.split() for line in table.splitlines() if line.startswith("agent ")]
    assert {(row[1], row[3]) for row in agent_rows} == {("agent-b", old_id), ("agent-a", new_id)}  # ISSUER CA

    with pytest.raises(CommandError, match="agent-b") as refused:
        manage("rotate_certs", running, "--drop-old-ca")
    assert "agent-a" not in str(refused.value)
    assert authorities.load_state(running.layout).trusted == [old_id, new_id]
    assert connects("agent-b", b_cert, b_trust)  # nothing changed for it

    b_new, b_new_trust, _ = running.issue("agent-b", out="agent-b-reissued")
    assert json.loads(manage("check_certs", running, "--json"))["agents_by_ca"][old_id]["agents"] == []
    manage("rotate_certs", running, "--drop-old-ca")
    running.restart()
    assert connects("agent-a", a_cert, a_trust)
    assert connects("agent-b", b_new, b_new_trust)
    assert not connects("agent-b", b_cert, b_trust)  # its old-CA certificate no longer chains


def test_drop_old_ca_with_force_names_the_agent_it_cuts_off_and_the_broker_refuses_it(running, connects):
    a_cert, a_trust, b_cert, b_trust = switched_with_one_agent_per_ca(running)
    assert connects("agent-b", b_cert, b_trust)

    output = manage("rotate_certs", running, "--drop-old-ca", "--force")
    assert "Cut off: agent-b" in output
    assert "agent-a" not in output
    running.restart()
    assert not connects("agent-b", b_cert, b_trust)
    assert connects("agent-a", a_cert, a_trust)
