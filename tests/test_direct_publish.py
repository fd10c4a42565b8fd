"""The dispatcher publishes its assignments itself (real Mosquitto on 127.0.0.1:1883); the bridge is the fallback."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

from aegis_agent import wire
from broker import outbox, publisher
from broker.direct import DirectPublisher
from broker.models import OutboxMessage
from broker.protocol import task_assign
from registry import actions as registry_actions
from registry.models import AdminState
from tasks import actions
from tasks.dispatcher import Dispatcher
from tests.support import wait_for
from tests.test_bridge import FakeAgent, broker_reachable


@pytest.fixture
def direct(settings) -> Iterator[DirectPublisher]:
    settings.MQTT_URL = "mqtt://127.0.0.1:1883"
    instance = DirectPublisher(client_id=f"dispatcher-{uuid.uuid4().hex[:8]}")
    connected = threading.Event()
    on_connect = instance._on_connect

    def connected_too(*args: Any) -> None:
        on_connect(*args)
        connected.set()

    instance.client.on_connect = connected_too
    instance.start()
    assert connected.wait(10), "the dispatcher's publisher did not connect"
    yield instance
    instance.stop()
    assert instance.sink() is None


@pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883")
def test_a_clean_stop_is_not_logged_as_a_lost_broker(settings, caplog) -> None:
    """Stopping the dispatcher (make run's Ctrl-C) disconnects its publisher: no warning about a lost broker."""
    settings.MQTT_URL = "mqtt://127.0.0.1:1883"
    instance = DirectPublisher(client_id=f"dispatcher-{uuid.uuid4().hex[:8]}")
    instance.start()
    try:
        wait_for(lambda: instance.sink() is not None, "the dispatcher's publisher connected", timeout=10)
    finally:
        instance.stop()
    assert instance.sink() is None
    assert "lost the broker" not in caplog.text


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    fake = FakeAgent(f"t-{uuid.uuid4().hex[:10]}")
    yield fake
    fake.close()


@pytest.mark.skipif(not broker_reachable(), reason="no MQTT broker on 127.0.0.1:1883")
@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_publishes_at_commit_and_marks_sent_after_the_puback(
    direct, fake_agent, make_agent, spec, operator
):
    make_agent(fake_agent.id)
    job, _ = actions.submit_job(spec(target_agent_ids=[fake_agent.id], payload={"n": 1}), operator)
    dispatcher = Dispatcher()
    dispatcher.direct = direct
    assert dispatcher.assign()
    message = fake_agent.next_message()  # no bridge runs: only the dispatcher can have sent it
    parsed = wire.parse_inbox(wire.encode(message))
    assert isinstance(parsed, wire.Assign)
    assert (parsed.task.job_id, parsed.task.payload, parsed.task.attempt) == (job.pk, {"n": 1}, 1)
    row = OutboxMessage.objects.get(agent_id=fake_agent.id)
    assert row.direct
    assert row.sent_at is not None  # flush() waited for the PUBACK and marked it


class RecordingPublisher:
    """Stands in for the dispatcher's ``DirectPublisher`` (no broker): records what it is handed at commit."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.published: list[list[OutboxMessage]] = []

    def sink(self) -> Any:
        return self.publish if self.connected else None

    def publish(self, messages: Any) -> None:
        self.published.append(list(messages))

    def flush(self, timeout: float = 5.0) -> int:
        return 0


def dispatcher_with(publisher: RecordingPublisher) -> Dispatcher:
    dispatcher = Dispatcher(batch_size=10)
    dispatcher.direct = publisher  # type: ignore[assignment]
    return dispatcher


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_hands_its_own_publisher_to_the_claim(make_agent, spec, operator):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    publisher_ = RecordingPublisher()

    assert dispatcher_with(publisher_).assign()

    (batch,) = publisher_.published  # after the commit, the rows the claim wrote
    row = OutboxMessage.objects.get(agent_id="a1")
    assert [(message.pk, message.message_type) for message in batch] == [(row.pk, "task.assign")]
    assert row.direct


@pytest.mark.django_db(transaction=True)
def test_while_its_publisher_is_disconnected_the_dispatcher_leaves_the_assignment_to_the_bridge(
    make_agent, spec, operator
):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    publisher_ = RecordingPublisher(connected=False)

    assert dispatcher_with(publisher_).assign()

    assert publisher_.published == []
    assert not OutboxMessage.objects.get(agent_id="a1").direct


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_publishes_the_cancels_of_expired_leases_itself(make_agent, spec, operator, frozen_clock):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], delivery_timeout_s=30), operator)
    publisher_ = RecordingPublisher()
    dispatcher = dispatcher_with(publisher_)
    assert dispatcher.assign()
    frozen_clock.advance(31)

    assert dispatcher.expire_leases()

    assert [message.message_type for batch in publisher_.published for message in batch] == [
        "task.assign",
        "task.cancel",
    ]
    assert OutboxMessage.objects.get(message_type="task.cancel").direct


@pytest.mark.django_db(transaction=True)
def test_what_others_write_in_the_dispatchers_process_stays_the_bridges(make_agent, spec, operator):
    """No process-wide publisher: only the claims the dispatcher runs with its own go direct."""
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    publisher_ = RecordingPublisher()
    dispatcher_with(publisher_).assign()

    registry_actions.set_admin_state("a1", AdminState.DRAINING, operator)

    assert not OutboxMessage.objects.get(message_type="agent.drain").direct
    assert len(publisher_.published) == 1


@pytest.mark.django_db
def test_the_bridge_leaves_a_direct_row_to_its_writer_for_the_grace_period(frozen_clock, make_agent):
    make_agent("a1")
    message = outbox.to_inbox("a1", "ping", frozen_clock())
    message.direct = True
    message.save()
    published: list[str] = []

    class Acked:
        def wait_for_publish(self, timeout: float | None = None) -> None:
            return None

        def is_published(self) -> bool:
            return True

    def publish(topic: str, payload: bytes) -> Acked:
        published.append(topic)
        return Acked()

    assert publisher.publish_pending(publish) == 0  # the dispatcher may still be waiting for its PUBACK
    frozen_clock.advance(django_settings.OUTBOX_HANDOFF_GRACE + 1)
    assert publisher.publish_pending(publish) == 1  # it did not mark it sent: the bridge takes over
    assert published == ["aegis/agents/a1/inbox"]


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_assignment_built_in_sql_matches_the_protocol_builder(make_agent, spec, operator):
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"], payload={"deep": [1, {"x": None}], "s": "é"}), operator)
    (assignment,) = actions.claim_tasks("a1", 10, push=True)
    row = OutboxMessage.objects.get(agent_id="a1")
    built = task_assign(
        row.created_at,
        task_id=assignment.task_id,
        attempt=assignment.attempt,
        job_id=assignment.job_id,
        kind=assignment.kind,
        payload=assignment.payload,
        timeout_s=assignment.timeout_s,
        lease_s=assignment.lease_s,
    )
    assert {**row.payload, "id": "-"} == {**built, "id": "-"}
    assert len(row.payload["id"]) == 32  # a fresh uuid4 in hex, as in Python
    assert int(row.payload["id"], 16) >= 0
    assert wire.parse_inbox(wire.encode(row.payload)) == wire.Assign(row.payload["id"], parsed_task(built))


def parsed_task(message: dict[str, object]) -> wire.TaskSpec:
    parsed = wire.parse_inbox(wire.encode(message))
    assert isinstance(parsed, wire.Assign)
    return parsed.task
