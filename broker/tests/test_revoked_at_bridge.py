"""A revoked agent certificate: registered when issued, revoked by revoke_agent_cert, refused at the bridge."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer, RevokedAgents
from registry import actions as registry_actions
from registry.models import Agent, AgentCredential, CredentialKind
from tests.support import envelope, mqtt_dropped

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker_dir(tmp_path: Path) -> Path:
    call_command("setup_broker", "--dir", str(tmp_path / "broker"), stdout=io.StringIO())
    return tmp_path / "broker"


def hello(agent_id: str) -> Incoming:
    body = envelope("hello", agent_version="1", capabilities=[], labels={}, max_concurrency=1, running=[])
    return Incoming(f"aegis/agents/{agent_id}/hello", body, 1, 1)


def test_issuing_registers_the_certificate_and_revoking_makes_the_bridge_drop_the_agent(broker_dir, tmp_path):
    for agent_id in ("edge-1", "edge-2"):
        call_command(
            "issue_agent_cert",
            agent_id,
            "--dir",
            str(broker_dir),
            "--out",
            str(tmp_path / agent_id),
            stdout=io.StringIO(),
        )
    credential = AgentCredential.objects.get(agent_id="edge-1", kind=CredentialKind.CERTIFICATE)
    assert credential.cert_serial
    assert credential.cert_fingerprint
    assert registry_actions.revoked_certificate_agents() == frozenset()

    call_command("revoke_agent_cert", "edge-1", "--dir", str(broker_dir), stdout=io.StringIO())
    assert registry_actions.revoked_certificate_agents() == frozenset({"edge-1"})

    revoked = RevokedAgents()
    revoked.maybe_refresh()
    before = mqtt_dropped()["revoked_certificate"]
    version_before = Agent.objects.get(pk="edge-1").version
    ingest([hello("edge-1"), hello("edge-2")], HeartbeatBuffer(), revoked)
    assert mqtt_dropped()["revoked_certificate"] == before + 1
    assert Agent.objects.get(pk="edge-1").version == version_before  # its hello changed nothing
    assert Agent.objects.get(pk="edge-2").version == "1"  # the other agent's was applied


def test_a_new_certificate_after_revocation_lets_the_agent_back_in(broker_dir, tmp_path):
    out = str(tmp_path / "edge-3")
    call_command("issue_agent_cert", "edge-3", "--dir", str(broker_dir), "--out", out, stdout=io.StringIO())
    call_command("revoke_agent_cert", "edge-3", "--dir", str(broker_dir), stdout=io.StringIO())
    assert "edge-3" in registry_actions.revoked_certificate_agents()
    call_command("issue_agent_cert", "edge-3", "--dir", str(broker_dir), "--out", out, stdout=io.StringIO())
    assert "edge-3" not in registry_actions.revoked_certificate_agents()


def test_agents_without_certificates_in_the_registry_are_not_refused(make_agent):
    make_agent("token-only")
    registry_actions.issue_token("token-only", registry_actions.Actor("tester"))
    assert registry_actions.revoked_certificate_agents() == frozenset()
