"""Task output end to end: Mosquitto from the generated configuration (TLS, ACL, aegis_auth) and the real
bridge store what an agent publishes on its logs topic, every byte once, in order.

The agent is simulated by an MQTT 5 client holding agent-a's certificate (the reference agent's output
side is a later slice of issue 17). It publishes a few hundred chunks of mixed streams and sizes, text
and raw bytes, and resends some of them as an agent does after a reconnect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid

import pytest

from aegis_site.core import counters
from broker.bridge import Bridge
from tasks import actions
from tasks.models import Task, TaskLogAttempt, TaskLogChunk
from tests.support import wait_for
from tests.test_broker_security import (  # noqa: F401  (broker: the module-scoped Mosquitto fixture)
    Broker,
    Probe,
    broker,
    probes,
)
from tests.test_e2e_tls import tls_bridge  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

CHUNKS = 400


def chunk_message(task: Task, seq: int, stream: str, data: bytes) -> bytes:
    document = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "ts": "2024-05-01T12:00:00Z",
        "type": "task.log",
        "task_id": task.pk,
        "attempt": task.attempt,
        "seq": seq,
        "stream": stream,
    }
    if seq % 3 == 0:  # raw bytes, not UTF-8, NUL included
        document |= {"data": base64.b64encode(data).decode(), "encoding": "base64"}
    else:
        document["data"] = data.decode()
    return json.dumps(document).encode()


def output_of(rng: random.Random, seq: int) -> bytes:
    size = rng.choice([0, 1, 80, 1000, 16 * 1024]) if seq % 7 else 16 * 1024
    if seq % 3 == 0:
        return rng.randbytes(size)
    return "".join(rng.choice("abcdé€ \n\t") for _ in range(size // 3)).encode()  # at most 3 bytes a character


@pytest.fixture
def held_task(make_agent, spec, operator) -> Task:
    make_agent("agent-a")
    actions.submit_job(spec(target_agent_ids=["agent-a"]), operator)
    (assignment,) = actions.claim_tasks("agent-a", 1)
    return Task.objects.get(pk=assignment.task_id)


def test_hundreds_of_chunks_arrive_complete_in_order_and_once(broker, probes, tls_bridge: Bridge, held_task):  # noqa: F811
    rng = random.Random(17)
    sent = [(seq, rng.choice(["stdout", "stderr", "system"]), output_of(rng, seq)) for seq in range(1, CHUNKS + 1)]
    resent = rng.sample(sent, 60)  # an agent resends what it saw no acknowledgement for
    order = sent[:200] + resent[:30] + sent[200:] + resent[30:]

    duplicates = counters.MQTT_DROPPED.labels("duplicate_seq")
    before = duplicates._value.get()
    agent = probes("agent-a")
    assert agent.start(broker, broker.agents["agent-a"])
    infos = [
        agent.client.publish("aegis/agents/agent-a/logs", chunk_message(held_task, seq, stream, data), qos=1)
        for seq, stream, data in order
    ]
    for info in infos:
        assert agent.wait_ack(info.mid).value == 0

    summary = wait_for(
        lambda: TaskLogAttempt.objects.filter(task=held_task, attempt=held_task.attempt, chunks=CHUNKS).first(),
        "every chunk stored",
        timeout=30,
    )
    rows = list(
        TaskLogChunk.objects.filter(task=held_task, attempt=held_task.attempt)
        .order_by("seq")
        .values_list("seq", "stream", "data")
    )
    assert [seq for seq, _, _ in rows] == list(range(1, CHUNKS + 1))  # none missing, none doubled
    assert [(seq, stream) for seq, stream, _ in rows] == [(seq, stream) for seq, stream, _ in sent]
    stored = b"".join(bytes(data) for _, _, data in rows)
    expected = b"".join(data for _, _, data in sent)
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(expected).hexdigest()
    wait_for(lambda: duplicates._value.get() == before + len(resent), "every resend counted as a duplicate")
    assert (summary.bytes, summary.max_seq, summary.truncated_at, summary.dropped) == (len(expected), CHUNKS, None, 0)
