"""An HTTP agent's tasks wait for its own claim: the dispatcher never assigns them or pushes them to MQTT."""

from __future__ import annotations

import pytest

from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import Agent, Transport
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Task, TaskState

pytestmark = pytest.mark.django_db


def test_the_dispatcher_leaves_an_http_agents_tasks_to_its_claim(make_agent, spec, operator, frozen_clock):
    make_agent("web-1", max_concurrency=4, transport=Transport.HTTP)
    make_agent("mq-1", max_concurrency=4, labels={"pool": "mqtt"})
    actions.submit_job(spec(mode="each", target_agent_ids=["web-1"]), operator)  # pinned to it
    actions.submit_job(spec(mode="any", target_agent_ids=["web-1"], task_count=2), operator)
    actions.submit_job(spec(mode="each", target_agent_ids=["mq-1"]), operator)

    dispatcher = Dispatcher(batch_size=10)
    dispatcher.hints = {"web-1", "mq-1"}  # as a NOTIFY naming both (a report of web-1 freed room) would
    assert dispatcher.assign() is True

    assert list(Task.objects.filter(state=TaskState.ASSIGNED).values_list("agent_id", flat=True)) == ["mq-1"]
    assert not OutboxMessage.objects.filter(agent_id="web-1").exists()
    assert "web-1" not in dispatcher.candidate_agents()

    claimed = actions.claim_tasks("web-1", 5)
    assert len(claimed) == 3


def test_how_an_agent_last_connected_decides_its_transport(make_agent, frozen_clock):
    make_agent("edge-1")
    assert Agent.objects.get(pk="edge-1").transport == Transport.MQTT  # the default: today's behaviour

    registry_actions.mark_online("edge-1", transport=Transport.HTTP)  # an HTTP heartbeat
    assert Agent.objects.get(pk="edge-1").transport == Transport.HTTP

    registry_actions.record_hello("edge-1", version="1", capabilities=[], labels={}, max_concurrency=1)
    assert Agent.objects.get(pk="edge-1").transport == Transport.MQTT

    assert registry_actions.use_transport("edge-1", Transport.HTTP) == 1  # an HTTP claim
    assert registry_actions.use_transport("edge-1", Transport.HTTP) == 0  # already so: nothing written
    assert Agent.objects.get(pk="edge-1").transport == Transport.HTTP
