"""End to end over the real thing: Mosquitto with the generated TLS + ACL configuration, the bridge with its
certificate, and the reference agent with its own certificate (CN = agent id)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from aegis_agent.agent import Agent as ReferenceAgent
from aegis_agent.config import AgentConfig
from broker import mosquitto
from broker.bridge import Bridge
from registry.models import Agent, Connectivity
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, Task
from tests.support import wait_for
from tests.test_broker_security import (  # noqa: F401  (broker: the module-scoped Mosquitto fixture)
    NOT_AUTHORIZED,
    Broker,
    Probe,
    broker,
)

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


def test_a_job_completes_while_another_agent_tries_to_join_the_bridges_share_group(
    broker,  # noqa: F811
    tls_bridge,
    operator,
    spec,
    settings,
):
    """Issue 13's attack end to end: agent-a's certificate subscribes to the bridge's shared
    subscriptions (persistent session, then offline) while agent-b runs a 120-task job through the
    real bridge and dispatcher. Before the aegis_auth plugin the broker gave the attacker its turn of
    agent-b's events and the job stalled with tasks left `assigned`."""
    group_topics = mosquitto.bridge_subscriptions(settings.MQTT_SHARE_GROUP)
    attacker = Probe("agent-a")
    assert attacker.start(broker, broker.agents["agent-a"], persistent=True)
    reasons = attacker.try_subscribe(*group_topics)
    attacker.stop()  # its session (and any share it got) outlives the connection
    worker = reference_agent(broker, "agent-b")
    worker.start()
    try:
        assert worker.wait_connected(10)
        wait_for(lambda: Agent.objects.filter(pk="agent-b", connectivity=Connectivity.ONLINE).exists(), "hello")
        job, _ = actions.submit_job(
            spec(kind="echo", mode="any", task_count=120, target_agent_ids=["agent-b"], delivery_timeout_s=600),
            operator,
        )
        dispatcher = Dispatcher()

        def finished() -> bool:
            dispatcher.assign()
            return Job.objects.get(pk=job.pk).state == "succeeded"

        wait_for(finished, "all 120 tasks succeeded", timeout=60)
        assert Task.objects.filter(job=job, state="succeeded").count() == 120
    finally:
        worker.stop(2)
    assert [reason.value for reason in reasons] == [NOT_AUTHORIZED] * len(group_topics)
