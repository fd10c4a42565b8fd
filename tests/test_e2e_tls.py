"""End to end over the real thing: Mosquitto with the generated TLS + ACL configuration, the bridge with its
certificate, and the reference agent with its own certificate (CN = agent id)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from aegis_agent.agent import Agent as ReferenceAgent
from aegis_agent.config import AgentConfig
from broker.bridge import Bridge
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, Task
from tests.support import wait_for
from tests.test_broker_security import Broker, broker  # noqa: F401  (the module-scoped Mosquitto fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tls_bridge(broker: Broker, settings) -> Iterator[Bridge]:  # noqa: F811
    settings.MQTT_CA_FILE = str(broker.layout.ca_cert)
    settings.MQTT_CERT_FILE = str(broker.layout.bridge_cert)
    settings.MQTT_KEY_FILE = str(broker.layout.bridge_key)
    settings.MQTT_SHARE_GROUP = f"e2e{uuid.uuid4().hex[:8]}"
    settings.BRIDGE_OUTBOX_POLL_INTERVAL = 0.05
    bridge = Bridge(f"mqtts://127.0.0.1:{broker.port}", client_id=f"aegis-bridge-{uuid.uuid4().hex[:8]}")
    bridge.start()
    assert bridge.connected.wait(10), f"bridge did not connect; broker log:\n{broker.log.read_text()[-2000:]}"
    yield bridge
    bridge.shutdown()


def reference_agent(broker: Broker, agent_id: str) -> ReferenceAgent:  # noqa: F811
    credentials = broker.agents[agent_id]
    config = AgentConfig(
        agent_id=agent_id,
        host="127.0.0.1",
        port=broker.port,
        tls_ca=str(broker.layout.ca_cert),
        tls_cert=str(credentials.cert),
        tls_key=str(credentials.key),
        labels={"site": "e2e"},
        heartbeat_interval_s=1.0,
    )
    return ReferenceAgent(config)


def test_an_agent_with_its_own_certificate_runs_a_task_and_the_job_completes(broker, tls_bridge, operator, spec):  # noqa: F811
    agent = reference_agent(broker, "agent-a")
    agent.start()
    try:
        assert agent.wait_connected(10)
        wait_for(
            lambda: Agent.objects.filter(pk="agent-a", connectivity=Connectivity.ONLINE).exists(), what="hello stored"
        )
        registered = Agent.objects.get(pk="agent-a")
        assert registered.labels == {"site": "e2e"}
        assert "echo" in registered.capabilities

        job, _ = actions.submit_job(spec(kind="echo", target_agent_ids=["agent-a"], payload={"n": 42}), operator)
        assert Dispatcher().assign()
        wait_for(lambda: Job.objects.get(pk=job.pk).state == "succeeded", "job succeeded", timeout=20)

        task = Task.objects.get(job=job)
        assert task.result == {"n": 42}
        assert list(task.events.values_list("kind", flat=True)) == ["created", "assigned", "accepted", "succeeded"]
    finally:
        agent.stop(2)


def test_heartbeats_over_tls_keep_the_agent_seen(broker, tls_bridge, settings):  # noqa: F811
    settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL = 0.2
    agent = reference_agent(broker, "agent-b")
    agent.start()
    try:
        wait_for(lambda: Agent.objects.filter(pk="agent-b").exists(), what="hello stored")
        first = Agent.objects.get(pk="agent-b").last_seen_at
        assert first is not None

        def moved() -> bool:
            seen = Agent.objects.get(pk="agent-b").last_seen_at
            return seen is not None and seen > first

        wait_for(moved, "a heartbeat flush", timeout=10)
    finally:
        agent.stop(2)
