"""Fault tests: the bridge, the broker, an agent or the database fails while results stream in, and no task is
lost and none completes twice.

Everything is real: a Mosquitto started from the generated TLS + ACL configuration
(with ``log_type debug`` added, so the broker's own log shows which client each
message went to and whether it was a redelivery), ``manage.py run_bridge`` as a
separate process that can be SIGKILLed, and agents that are paho clients with
their own certificates. Work is seeded through ``tasks.actions``; the verdict is
read from the database.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.db import connection
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion

from aegis_agent.redelivery import redelivery
from broker import mosquitto
from broker.models import OutboxMessage
from registry.models import Agent, Connectivity
from registry.pki.agents import write_agent_bundle
from tasks import actions
from tasks.models import Job, JobState, Task, TaskEvent, TaskState
from tests import roles, support
from tests.support import envelope, free_port

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DEADLINE_S = 60.0
POLL_S = 0.1
BROKER_OUTAGE_S = 3.5
NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK reason code 0x10

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S, interval: float = POLL_S) -> Any:
    return support.wait_for(condition, what, timeout, interval)


# --- the broker ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path


class Broker:
    """One Mosquitto per test, so sessions and persistence never leak from one fault into the next."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "mosquitto.log"
        self.port = free_port()
        # Started as root, Mosquitto drops to user "mosquitto", who cannot read the 0600 keys here.
        run_as = "root" if os.geteuid() == 0 else None
        files = mosquitto.write_broker_files(root / "broker", port=self.port, log_file=self.log, run_as_user=run_as)
        self.layout = files.layout
        with self.layout.conf.open("a") as conf:
            conf.write("log_type debug\n")  # one line per PUBLISH sent: who got which message, and redeliveries
        self.process: subprocess.Popen[bytes] | None = None
        self._agents: dict[str, Credentials] = {}

    @property
    def bridge(self) -> Credentials:
        return Credentials(self.layout.ca_cert, self.layout.bridge_cert, self.layout.bridge_key)

    def agent(self, agent_id: str) -> Credentials:
        if agent_id not in self._agents:
            bundle = write_agent_bundle(self.layout.directory, agent_id, self.root / "agents")
            self._agents[agent_id] = Credentials(bundle.ca_cert, bundle.cert, bundle.key)
        return self._agents[agent_id]

    def start(self) -> None:
        self.process = subprocess.Popen(mosquitto.mosquitto_command(self.layout, MOSQUITTO), cwd=self.root)

        def listening() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"mosquitto exited:\n{self.log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, "mosquitto to listen", timeout=10, interval=0.02)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file (sessions, queued messages) on the way out."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def publishes_to(self, client_id: str, topic_part: str = "/events'") -> list[str]:
        """Debug lines ``Sending PUBLISH to <client> (d<dup>, q1, ...)`` for agent events sent to ``client_id``."""
        prefix = f"Sending PUBLISH to {client_id} ("
        return [line for line in self.log_text().splitlines() if prefix in line and topic_part in line]

    def subacks_to(self, client_id: str) -> int:
        return self.log_text().count(f"Sending SUBACK to {client_id}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    instance = Broker(tmp_path / "mq")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        print(f"--- mosquitto log (tail) ---\n{instance.log_tail()}")


# --- the bridge, as a process ---------------------------------------------------------------------------------


def bridge_database_url() -> str:
    return roles.database_url()  # the test database, for role processes


class BridgeProcess:
    """``manage.py run_bridge`` in its own process: it can be SIGKILLed like a crashed pod."""

    def __init__(self, broker: Broker, client_id: str, share_group: str, log: Path, **settings: str) -> None:
        self.client_id = client_id
        self.log = log
        credentials = broker.bridge
        env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "MQTT_URL"}}
        env.update(
            DATABASE_URL=bridge_database_url(),
            MQTT_URL=f"mqtts://127.0.0.1:{broker.port}",
            MQTT_CA_FILE=str(credentials.ca),
            MQTT_CERT_FILE=str(credentials.cert),
            MQTT_KEY_FILE=str(credentials.key),
            MQTT_CLIENT_ID=client_id,
            PGAPPNAME=client_id,  # libpq names every connection of the process, so a test can cut exactly those
            MQTT_SHARE_GROUP=share_group,
            BRIDGE_OUTBOX_POLL_INTERVAL="0.05",
            BRIDGE_HEARTBEAT_FLUSH_INTERVAL="0.2",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(settings)
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "run_bridge"],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connections(self) -> int:
        return self.log_text().count("bridge connected")

    def wait_connected(self, broker: Broker, times: int = 1) -> None:
        """Connected, and the broker has answered this connection's SUBSCRIBE (so nothing published now is missed)."""

        def subscribed() -> bool:
            assert self.alive(), f"bridge {self.client_id} exited:\n{self.log_text()}"
            return self.connections() >= times and broker.subacks_to(self.client_id) >= times

        wait_for(subscribed, f"bridge {self.client_id} to connect and subscribe ({times}x)")

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def bridges(broker: Broker, tmp_path: Path, transactional_db: Any) -> Iterator[Callable[..., BridgeProcess]]:
    """Starts bridge processes; every one is killed before the test database is flushed."""
    started: list[BridgeProcess] = []
    share_group = f"faults{uuid.uuid4().hex[:8]}"

    def start(client_id: str, **settings: str) -> BridgeProcess:
        log = tmp_path / f"{client_id}.log"
        bridge = BridgeProcess(broker, client_id, share_group, log, **settings)
        started.append(bridge)
        return bridge

    try:
        yield start
    finally:
        for bridge in started:
            bridge.kill()
        for number, bridge in enumerate(started, 1):
            print(f"--- bridge process {number} ({bridge.client_id}) exit {bridge.process.returncode} ---")
            print(bridge.log_text()[-20_000:])


# --- agents -----------------------------------------------------------------------------------------------------


class AgentClient:
    """An agent speaking protocol v1 by hand over TLS with its own certificate; tracks which PUBLISHes were PUBACKed."""

    def __init__(self, broker: Broker, agent_id: str) -> None:
        self.id = agent_id
        self.broker = broker
        credentials = broker.agent(agent_id)
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        # Never held while calling paho: paho runs on_publish under its own lock, publish() takes that lock too.
        self._lock = threading.Lock()
        self._sent: dict[int, tuple[str, bytes]] = {}  # mid → (channel, payload)
        self._acked: set[int] = set()
        self._unrouted: set[int] = set()  # PUBACK reason 16: the broker took the message and dropped it
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(credentials.ca), certfile=str(credentials.cert), keyfile=str(credentials.key))
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.will_set(self.topic("status"), envelope("status", state="offline"), qos=1, retain=True)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self.subscribed.set()
        client.on_publish = self._on_publish
        client.on_message = lambda c, u, message: self.inbox.put(json.loads(message.payload))
        self.client = client

    def topic(self, channel: str) -> str:
        return f"aegis/agents/{self.id}/{channel}"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic("inbox"), qos=1)
            self.connected.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self._acked.add(mid)
            if reason.value == NO_MATCHING_SUBSCRIBERS:
                self._unrouted.add(mid)
        redelivery.on_publish(client, mid, reason)  # what the reference agent does: publish it again

    def connect(self) -> AgentClient:
        self.client.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), f"{self.id} did not connect"
        assert self.subscribed.wait(10), f"{self.id} did not subscribe to its inbox"
        return self

    def send(self, channel: str, payload: bytes) -> None:
        """QoS 1; while the broker is away paho keeps the message and sends it after reconnecting."""
        info = redelivery.publish(self.client, self.topic(channel), payload)
        with self._lock:
            self._sent[info.mid] = (channel, payload)

    def report(self, kind: str, task_id: int, attempt: int, **fields: Any) -> bytes:
        payload = envelope(f"task.{kind}", task_id=task_id, attempt=attempt, **fields)
        self.send("events", payload)
        return payload

    def online(self) -> None:
        self.send("status", envelope("status", state="online"))

    def unacknowledged(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [sent for mid, sent in self._sent.items() if mid not in self._acked]

    def unrouted(self) -> list[bytes]:
        """Messages the broker acknowledged with "No matching subscribers" (a success code to MQTT 5) and dropped."""
        with self._lock:
            return [self._sent[mid][1] for mid in sorted(self._unrouted) if mid in self._sent]

    def settle(self, timeout: float = 30.0) -> int:
        """Wait for every PUBACK; republish (same message id) what the broker never acknowledged. Returns how many."""
        try:
            wait_for(lambda: not self.unacknowledged(), f"{self.id}: PUBACKs", timeout=timeout)
            return 0
        except AssertionError:
            missing = self.unacknowledged()
            with self._lock:
                self._sent = {mid: sent for mid, sent in self._sent.items() if mid in self._acked}
            for channel, payload in missing:
                self.send(channel, payload)
            wait_for(lambda: not self.unacknowledged(), f"{self.id}: PUBACKs after republishing", timeout=timeout)
            return len(missing)

    def next_message(self, timeout: float = 20.0) -> dict[str, Any]:
        return self.inbox.get(timeout=timeout)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a killed process: the broker publishes the Last Will."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@pytest.fixture
def agents(broker: Broker) -> Iterator[Callable[[str], AgentClient]]:
    made: list[AgentClient] = []

    def make(agent_id: str) -> AgentClient:
        agent = AgentClient(broker, agent_id)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        try:
            agent.close()
        except Exception:  # a crashed agent's socket is already gone
            agent.client.loop_stop()


def stream(agent: AgentClient, assignments: list[actions.Assignment], pause_s: float = 0.0) -> threading.Thread:
    """Report ``succeeded`` for every assignment from a background thread, ``pause_s`` apart."""

    def run() -> None:
        for assignment in assignments:
            agent.report("succeeded", assignment.task_id, assignment.attempt, result={"n": assignment.task_id})
            if pause_s:
                time.sleep(pause_s)

    thread = threading.Thread(target=run, name=f"stream-{agent.id}", daemon=True)
    thread.start()
    return thread


# --- seeding and verdicts ---------------------------------------------------------------------------------------


def seed(spec: Any, operator: Any, agent_ids: list[str], per_agent: int, **policy: Any) -> tuple[Job, dict[str, list]]:
    """One 'any' job with ``per_agent`` tasks for each agent, claimed directly (no dispatcher, no outbox)."""
    job, _ = actions.submit_job(
        spec(mode="any", task_count=per_agent * len(agent_ids), target_agent_ids=agent_ids, **policy), operator
    )
    claimed = {agent_id: actions.claim_tasks(agent_id, per_agent) for agent_id in agent_ids}
    assert all(len(held) == per_agent for held in claimed.values())
    assert all(a.attempt == 1 for held in claimed.values() for a in held)
    return job, claimed


def succeeded(job: Job) -> int:
    return Task.objects.filter(job_id=job.pk, state=TaskState.SUCCEEDED).count()


def wait_job_succeeded(job: Job, bridges: list[BridgeProcess]) -> None:
    def done() -> bool:
        for bridge in bridges:
            assert bridge.alive(), f"bridge {bridge.client_id} died:\n{bridge.log_text()[-5000:]}"
        return Job.objects.filter(pk=job.pk, state=JobState.SUCCEEDED).exists()

    wait_for(done, f"job {job.pk} to succeed ({succeeded(job)} of {job.tasks_total} tasks so far)")


def assert_every_task_succeeded_once(job: Job) -> None:
    """The acceptance criterion: every task ended once, for its current attempt, and the counters agree."""
    job.refresh_from_db()
    tasks = dict(Task.objects.filter(job_id=job.pk).values_list("pk", "attempt"))
    states = Counter(Task.objects.filter(job_id=job.pk).values_list("state", flat=True))
    assert states == {TaskState.SUCCEEDED: job.tasks_total}
    events = list(TaskEvent.objects.filter(task__job_id=job.pk, kind="succeeded").values_list("task_id", "attempt"))
    per_task = Counter(task_id for task_id, _ in events)
    assert set(per_task) == set(tasks)
    assert [task_id for task_id, count in per_task.items() if count != 1] == []
    assert all(attempt == tasks[task_id] for task_id, attempt in events)
    assert (job.state, job.tasks_succeeded, job.tasks_failed, job.tasks_canceled) == (
        JobState.SUCCEEDED,
        job.tasks_total,
        0,
        0,
    )
    assert job.finished_at is not None
    assert not Task.objects.filter(state__in=[TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING]).exists()
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


def terminate_backends(bridge: BridgeProcess) -> int:
    """Cut every connection the bridge holds (consumer, publisher, LISTEN); returns how many were cut.

    Not ``pid <> pg_backend_pid()``: that spares only the connection in use, and the
    test process's own pooled connections would die too.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"], bridge.client_id],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


# --- the faults ---------------------------------------------------------------------------------------------------


def test_a_new_bridge_with_the_same_client_id_applies_what_a_killed_bridge_left_unacknowledged(
    broker, bridges, agents, make_agent, spec, operator
):
    make_agent("kill-a", max_concurrency=1000)
    job, claimed = seed(spec, operator, ["kill-a"], 300)
    first, second = claimed["kill-a"][:150], claimed["kill-a"][150:]
    # Small batches: many commits, so the SIGKILL lands between a commit and its PUBACKs or mid-batch.
    bridge = bridges("aegis-bridge-kill", BRIDGE_BATCH_SIZE="5")
    bridge.wait_connected(broker)
    agent = agents("kill-a").connect()

    stream(agent, first).join(timeout=DEADLINE_S)
    wait_for(lambda: succeeded(job) >= 10, "the bridge to apply the first results", interval=0.02)
    bridge.kill()
    applied_at_kill = succeeded(job)
    assert 0 < applied_at_kill < len(first), "the bridge must die mid-stream"

    stream(agent, second).join(timeout=DEADLINE_S)  # queued by the broker in the dead bridge's session
    assert agent.settle() == 0
    redeliveries_before = len([line for line in broker.publishes_to("aegis-bridge-kill") if "(d1," in line])

    replacement = bridges("aegis-bridge-kill", BRIDGE_BATCH_SIZE="5")
    wait_job_succeeded(job, [replacement])

    assert_every_task_succeeded_once(job)
    after = broker.publishes_to("aegis-bridge-kill")
    # The broker resent what the killed bridge never acknowledged, flagged as a duplicate delivery.
    assert len([line for line in after if "(d1," in line]) > redeliveries_before
    assert len(after) >= 300


def test_a_mosquitto_restart_mid_stream_loses_and_doubles_nothing(broker, bridges, agents, make_agent, spec, operator):
    make_agent("restart-a", max_concurrency=1000)
    job, claimed = seed(spec, operator, ["restart-a"], 300)
    bridge = bridges("aegis-bridge-restart", BRIDGE_BATCH_SIZE="20")
    bridge.wait_connected(broker)
    agent = agents("restart-a").connect()

    streaming = stream(agent, claimed["restart-a"], pause_s=0.01)
    wait_for(lambda: succeeded(job) >= 60, "the bridge to apply the first results", interval=0.02)
    broker.stop()
    applied_while_down = succeeded(job)
    # A restart that takes a few seconds (an upgrade, a pod moving). Meanwhile the agent keeps reporting into
    # paho's queue, and both clients back off: the agent's paho at 1, 2, 2 s, the bridge's at 1, 2, 4 s.
    time.sleep(BROKER_OUTAGE_S)
    broker.start()
    streaming.join(timeout=DEADLINE_S)
    assert not streaming.is_alive()
    assert applied_while_down < 300, "the broker must go away mid-stream"

    republished = agent.settle()
    bridge.wait_connected(broker, times=2)  # it reconnected by itself, and subscribed again
    # Mosquitto 2.0 restores the bridge's session but not its shared subscriptions, so results published
    # before the bridge subscribed again were acknowledged with reason 16 "No matching subscribers" and
    # dropped; the agent publishes those again (aegis_agent.redelivery) until a subscriber takes them.
    unrouted = len(agent.unrouted())
    wait_for(lambda: succeeded(job) >= 300, "every result to be applied, the unrouted ones published again")
    doubled = Counter(TaskEvent.objects.filter(task__job_id=job.pk, kind="succeeded").values_list("task_id", flat=True))
    assert [task_id for task_id, count in doubled.items() if count > 1] == []
    wait_job_succeeded(job, [bridge])

    assert_every_task_succeeded_once(job)
    assert bridge.alive()
    assert "bridge lost the broker" in bridge.log_text()
    print(f"applied before the restart: {applied_while_down}; republished: {republished}; unrouted: {unrouted}")


def test_a_killed_agents_task_is_retried_after_its_lease_and_its_late_result_changes_nothing(
    broker, bridges, agents, make_agent, spec, operator
):
    make_agent("crash-a", online=False, max_concurrency=10)
    bridge = bridges("aegis-bridge-crash")
    bridge.wait_connected(broker)
    agent = agents("crash-a").connect()
    agent.online()
    wait_for(lambda: Agent.objects.filter(pk="crash-a", connectivity=Connectivity.ONLINE).exists(), "online")

    job, _ = actions.submit_job(
        spec(
            mode="any",
            task_count=3,
            target_agent_ids=["crash-a"],
            delivery_timeout_s=1,
            execution_timeout_s=1,
            backoff_base_s=0.05,
            backoff_cap_s=0.1,
        ),
        operator,
    )
    assert len(actions.claim_tasks("crash-a", 3, push=True)) == 3
    received = [agent.next_message()["task"] for _ in range(3)]
    assert [task["attempt"] for task in received] == [1, 1, 1]
    done, running, undelivered = sorted(task["id"] for task in received)

    agent.report("accepted", done, 1)
    agent.report("succeeded", done, 1, result={"attempt": 1})
    agent.report("accepted", running, 1)
    wait_for(
        lambda: (
            Task.objects.filter(pk=done, state=TaskState.SUCCEEDED).exists()
            and Task.objects.filter(pk=running, state=TaskState.RUNNING).exists()
        ),
        "the first result and the second accept",
    )
    agent.crash()
    wait_for(lambda: Agent.objects.get(pk="crash-a").connectivity == Connectivity.OFFLINE, "the Last Will applied")

    def leases_ran_out() -> bool:
        leases = Task.objects.filter(pk__in=[running, undelivered]).values_list("lease_expires_at", flat=True)
        return all(lease is not None and lease < timezone.now() for lease in leases)

    wait_for(leases_ran_out, "both leases to run out")
    assert actions.expire_leases() == 2
    requeued = Task.objects.filter(pk__in=[running, undelivered])
    assert set(requeued.values_list("state", "attempt")) == {(TaskState.QUEUED, 1)}
    kinds = set(TaskEvent.objects.filter(task_id__in=[running, undelivered]).values_list("task_id", "kind"))
    assert {(running, "execution_timeout"), (undelivered, "delivery_timeout")} <= kinds

    # The agent process comes back: a new connection, same identity.
    revived = agents("crash-a").connect()
    revived.online()
    wait_for(lambda: Agent.objects.get(pk="crash-a").connectivity == Connectivity.ONLINE, "online again")
    retried = wait_for(lambda: actions.claim_tasks("crash-a", 3, push=True), "the retries to be claimable")
    assert sorted((a.task_id, a.attempt) for a in retried) == [(running, 2), (undelivered, 2)]
    assert sorted(revived.next_message()["task"]["attempt"] for _ in range(2)) == [2, 2]

    # Late results of attempt 1, finished before the crash but never delivered, arrive now.
    late = [
        revived.report("succeeded", running, 1, result={"late": True}),
        revived.report("succeeded", undelivered, 1, result={"late": True}),
        revived.report("succeeded", done, 1, result={"late": "again"}),
    ]
    late_ids = [json.loads(payload)["id"] for payload in late]
    wait_for(lambda: TaskEvent.objects.filter(message_id__in=late_ids).count() == 3, "the late results recorded")
    assert set(TaskEvent.objects.filter(message_id__in=late_ids).values_list("kind", "attempt")) == {("stale", 1)}
    assert set(Task.objects.filter(pk__in=[running, undelivered]).values_list("state", "attempt", "result")) == {
        (TaskState.ASSIGNED, 2, None)
    }
    assert Task.objects.get(pk=done).result == {"attempt": 1}
    job.refresh_from_db()
    assert (job.state, job.tasks_succeeded) == (JobState.RUNNING, 1)

    for task_id in (running, undelivered):
        revived.report("accepted", task_id, 2)
        revived.report("succeeded", task_id, 2, result={"attempt": 2})
    wait_job_succeeded(job, [bridge])

    assert_every_task_succeeded_once(job)
    assert dict(Task.objects.filter(job_id=job.pk).values_list("pk", "result")) == {
        done: {"attempt": 1},
        running: {"attempt": 2},
        undelivered: {"attempt": 2},
    }


def test_the_bridge_survives_database_connections_dropped_during_ingestion(
    broker, bridges, agents, make_agent, spec, operator
):
    make_agent("dbdrop-a", max_concurrency=1000)
    job, claimed = seed(spec, operator, ["dbdrop-a"], 300)
    bridge = bridges("aegis-bridge-dbdrop", BRIDGE_BATCH_SIZE="20")
    bridge.wait_connected(broker)
    agent = agents("dbdrop-a").connect()

    streaming = stream(agent, claimed["dbdrop-a"], pause_s=0.008)
    terminated, cuts = 0, 0
    deadline = time.monotonic() + DEADLINE_S
    while streaming.is_alive() and time.monotonic() < deadline:
        time.sleep(0.25)
        terminated += terminate_backends(bridge)
        cuts += 1
    assert not streaming.is_alive()
    assert agent.settle() == 0
    wait_job_succeeded(job, [bridge])

    assert_every_task_succeeded_once(job)
    assert cuts >= 3
    assert terminated >= cuts  # each cut took at least the bridge's consumer connection
    text = bridge.log_text()
    assert "bridge batch failed" in text or "applying the batch on a new one" in text  # retried, not acknowledged

    # Nothing is stuck on the way out either: an assignment still reaches the agent through the outbox.
    extra, _ = actions.submit_job(spec(mode="any", task_count=1, target_agent_ids=["dbdrop-a"]), operator)
    (assignment,) = actions.claim_tasks("dbdrop-a", 1, push=True)
    message = agent.next_message()
    assert (message["type"], message["task"]["id"]) == ("task.assign", assignment.task_id)
    agent.report("succeeded", assignment.task_id, assignment.attempt, result={})
    wait_job_succeeded(extra, [bridge])
    assert bridge.alive()


def test_a_connection_cut_while_the_bridge_waits_costs_no_failed_step(
    broker, bridges, agents, make_agent, spec, operator
):
    """A connection terminated while the bridge waits is replaced at its next checkout: no failed step."""
    make_agent("idlecut-a", max_concurrency=10)
    job, claimed = seed(spec, operator, ["idlecut-a"], 2)
    bridge = bridges("aegis-bridge-idlecut")
    bridge.wait_connected(broker)
    agent = agents("idlecut-a").connect()
    first, second = claimed["idlecut-a"]
    agent.report("succeeded", first.task_id, first.attempt, result={})
    wait_for(lambda: succeeded(job) == 1, "the first result applied")
    assert terminate_backends(bridge) >= 1  # the pool's idle connections among them
    agent.report("succeeded", second.task_id, second.attempt, result={})
    wait_job_succeeded(job, [bridge])
    assert_every_task_succeeded_once(job)
    assert "bridge batch failed" not in bridge.log_text()  # no failed step, no backoff, no error in the log


def test_two_bridges_split_the_load_and_apply_each_result_once(broker, bridges, agents, make_agent, spec, operator):
    agent_ids = [f"pair-{n}" for n in range(4)]
    for agent_id in agent_ids:
        make_agent(agent_id, max_concurrency=1000)
    job, claimed = seed(spec, operator, agent_ids, 100)
    pair = [
        bridges("aegis-bridge-pair-1", BRIDGE_BATCH_SIZE="20"),
        bridges("aegis-bridge-pair-2", BRIDGE_BATCH_SIZE="20"),
    ]
    for bridge in pair:
        bridge.wait_connected(broker)
    clients = [agents(agent_id).connect() for agent_id in agent_ids]

    streams = [stream(client, claimed[client.id]) for client in clients]
    for thread in streams:
        thread.join(timeout=DEADLINE_S)
    assert all(client.settle() == 0 for client in clients)
    wait_job_succeeded(job, pair)

    assert_every_task_succeeded_once(job)
    delivered = {bridge.client_id: len(broker.publishes_to(bridge.client_id)) for bridge in pair}
    print(f"results delivered per bridge: {delivered}")
    assert sum(delivered.values()) >= 400
    # Both took a real share (Mosquitto hands a share group's messages out in turn).
    assert all(count >= 100 for count in delivered.values()), delivered
    assert all(bridge.alive() for bridge in pair)


def test_when_one_of_two_bridges_stops_the_other_applies_every_new_result(
    broker, bridges, agents, make_agent, spec, operator
):
    make_agent("scale-a", max_concurrency=1000)
    job, claimed = seed(spec, operator, ["scale-a"], 100)
    staying, leaving = bridges("aegis-bridge-stay"), bridges("aegis-bridge-leave")
    for bridge in (staying, leaving):
        bridge.wait_connected(broker)
    leaving.process.terminate()  # a replica scaled down: SIGTERM, a clean stop
    assert leaving.process.wait(timeout=20) == 0
    agent = agents("scale-a").connect()

    stream(agent, claimed["scale-a"]).join(timeout=DEADLINE_S)
    assert agent.settle() == 0
    # Mosquitto routes a message before it PUBACKs it, so by now its log names every message the live bridge got.
    routed = len(broker.publishes_to("aegis-bridge-stay"))
    wait_for(lambda: succeeded(job) >= routed, f"the remaining bridge to apply the {routed} results it received")
    deadline = time.monotonic() + 5  # then a little grace for anything routed later
    while succeeded(job) < 100 and time.monotonic() < deadline:
        time.sleep(POLL_S)
    to_leaving = len(broker.publishes_to("aegis-bridge-leave"))
    # Mosquitto keeps a stopped member's persistent session (MQTT_SESSION_EXPIRY) in the share group and queues
    # its turn of the messages there: they wait for a bridge with that client id, or expire with the session.
    assert succeeded(job) == 100, (
        f"{succeeded(job)} of 100 results applied by the remaining bridge; the broker sent "
        f"{len(broker.publishes_to('bridge-stay'))} to it and {to_leaving} to the stopped one while it was online"
    )
    assert_every_task_succeeded_once(job)
    assert staying.alive()
