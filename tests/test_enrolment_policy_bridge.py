"""Issue 13 item 9 through the real bridge and Mosquitto: an enrolled agent's hello cannot widen its policy."""

from __future__ import annotations

import uuid

import pytest

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent, Connectivity
from tests.support import envelope, wait_for
from tests.test_bridge import FakeAgent, bridge, broker_reachable  # noqa: F401  (bridge: the fixture)

pytestmark = [
    pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883"),
    pytest.mark.django_db(transaction=True),
]


def test_a_hello_over_mqtt_cannot_claim_a_role_or_capability_the_enrolment_token_did_not_allow(bridge):  # noqa: F811
    agent_id = f"edge-{uuid.uuid4().hex[:8]}"
    _row, bootstrap = registry_actions.create_enrolment_token(
        Actor("tester"), fixed_labels={"site": "lab"}, allowed_capabilities=["echo"]
    )
    registry_actions.enrol(bootstrap, agent_id, capabilities=["echo"])
    agent = FakeAgent(agent_id)
    try:
        agent.send("status", envelope("status", state="online"))
        hello = {"agent_version": "x", "max_concurrency": 4, "running": []}
        agent.send(
            "hello",
            envelope("hello", **hello, capabilities=["echo", "db-restore"], labels={"role": "db-primary"}),
        )
        wait_for(
            lambda: Agent.objects.filter(pk=agent_id, connectivity=Connectivity.ONLINE, version="x").exists(),
            what="the hello applied",
        )
    finally:
        agent.close()
    stored = Agent.objects.get(pk=agent_id)
    assert (stored.labels, stored.capabilities) == ({"site": "lab"}, ["echo"])
