"""CA rotation and revocation against a real Mosquitto running the generated TLS configuration."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command

from broker import certs, mosquitto, pki
from tests.test_broker_security import MOSQUITTO, Credentials, Probe, free_port, stop, wait_for_port

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")


class RunningBroker:
    """One broker directory and its Mosquitto, which the test restarts after each trust change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "mosquitto.log"
        self.port = free_port()
        run_as = "root" if os.geteuid() == 0 else None
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

    def issue(self, agent_id: str) -> tuple[Credentials, Path, pki.IssuedCertificate]:
        bundle = mosquitto.write_agent_bundle(self.layout.directory, agent_id, self.root / agent_id)
        return Credentials(bundle.cert, bundle.key), bundle.ca_cert, bundle.issued


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningBroker]:
    broker = RunningBroker(tmp_path)
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
    certs.start_ca_rotation(running.layout)
    running.start()
    # Not yet redistributed: the agent still trusts only the old CA, which signs the server.
    assert connects("agent-old", old_agent, old_agent_trust)
    assert connects("agent-old", old_agent, running.layout.ca_bundle)

    certs.finish_ca_rotation(running.layout)
    running.restart()
    new_agent, new_agent_trust, new_issued = running.issue("agent-new")
    new_ca = pki.load_issued(running.layout.ca_cert, running.layout.ca_key).certificate
    assert pki.is_signed_by(new_issued.certificate, new_ca)
    assert connects("agent-new", new_agent, new_agent_trust)
    assert connects("agent-old", old_agent, running.layout.ca_bundle)  # old-CA certificate, bundle as trust
    assert not connects("agent-old", old_agent, old_agent_trust)  # it must take the bundle before the switch

    certs.drop_old_ca(running.layout)
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
    certs.start_ca_rotation(running.layout)
    certs.finish_ca_rotation(running.layout)
    new_agent, trust, _ = running.issue("agent-new")
    call_command("revoke_agent_cert", "agent-r", "--dir", str(running.layout.directory))
    running.start()

    assert not connects("agent-r", revoked, trust)
    assert connects("agent-old", old_agent, trust)  # the old CA has its own (empty of it) CRL in crl.pem
    assert connects("agent-new", new_agent, trust)
