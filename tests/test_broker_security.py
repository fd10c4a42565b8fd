"""A real Mosquitto, started with the generated TLS + ACL configuration, keeps agents apart.

Absence is proven with a marker: after the forbidden message, a permitted one
follows the same route to the same receiver. Mosquitto is single-threaded and
delivers one publisher's messages to one subscriber in order, so once the marker
is in, the forbidden message would have been too. A positive control shows each
forbidden message really was published and delivered to whoever may read it.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker import mosquitto
from registry.pki import crypto
from registry.pki.agents import write_agent_bundle

WAIT_S = 5.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NOT_AUTHORIZED = 135

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")


@dataclass(frozen=True)
class Credentials:
    cert: Path | None
    key: Path | None


@dataclass
class Broker:
    host: str
    port: int
    layout: mosquitto.BrokerLayout
    agents: dict[str, Credentials]
    foreign: Credentials
    log: Path

    @property
    def bridge(self) -> Credentials:
        return Credentials(self.layout.bridge_cert, self.layout.bridge_key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=WAIT_S)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("mosquitto")
    # Started as root, Mosquitto drops to user "mosquitto" before reading the 0600
    # keys in a 0700 pytest directory; a throwaway test broker may stay root.
    run_as = "root" if os.geteuid() == 0 else None
    log = root / "mosquitto.log"
    agents_dir = root / "agents"
    for attempt in range(3):
        port = free_port()
        files = mosquitto.write_broker_files(root / "broker", port=port, log_file=log, run_as_user=run_as)
        if attempt == 0:
            agents = {}
            for agent_id in ("agent-a", "agent-b", "agent-w"):
                bundle = write_agent_bundle(files.layout.directory, agent_id, agents_dir)
                agents[agent_id] = Credentials(bundle.cert, bundle.key)
            impostor = crypto.issue_agent_cert(crypto.create_ca(), "agent-a")
            foreign_cert, foreign_key = root / "foreign" / "agent-a.crt", root / "foreign" / "agent-a.key"
            crypto.write_issued(impostor, foreign_cert, foreign_key)
            foreign = Credentials(foreign_cert, foreign_key)
        process = subprocess.Popen(mosquitto.mosquitto_command(files.layout, MOSQUITTO), cwd=root)
        if wait_for_port(process, port):
            break
        stop(process)  # most likely another process took the port meanwhile
    else:
        pytest.fail(f"mosquitto did not start; its log:\n{log.read_text() if log.exists() else ''}")
    try:
        yield Broker("127.0.0.1", port, files.layout, agents, foreign, log)
    finally:
        stop(process)


def set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Probe:
    """A paho MQTT 5 client whose callbacks become events and queues the test waits on."""

    client_id: str
    protocol: int = mqtt.MQTTv5
    client: mqtt.Client = field(init=False)
    connected: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    seen: list[mqtt.MQTTMessage] = field(default_factory=list)
    acks: dict[int, ReasonCode] = field(default_factory=dict)
    granted: dict[int, list[ReasonCode]] = field(default_factory=dict)  # SUBACK reason codes per SUBSCRIBE
    acked: threading.Condition = field(default_factory=threading.Condition)
    refusal: BaseException | None = None

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self.protocol == mqtt.MQTTv5 else False,
            protocol=self.protocol,
            reconnect_on_failure=False,
        )
        self.client.on_socket_open = set_nodelay
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_ack

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        (self.closed if reason.is_failure else self.connected).set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.closed.set()

    def _on_ack(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.acked:
            if isinstance(reason, list):
                self.granted[mid] = list(reason)
            self.acks[mid] = reason[0] if isinstance(reason, list) else reason
            self.acked.notify_all()

    def start(
        self, broker: Broker, credentials: Credentials | None, *, tls: bool = True, persistent: bool = False
    ) -> bool:
        """Connect; True once the broker accepted, False once it refused (never a silent timeout).

        ``persistent``: resume the client id's session and keep it an hour after disconnecting.
        """
        if tls:
            certfile = str(credentials.cert) if credentials and credentials.cert else None
            keyfile = str(credentials.key) if credentials and credentials.key else None
            self.client.tls_set(ca_certs=str(broker.layout.ca_cert), certfile=certfile, keyfile=keyfile)
        properties = None
        if persistent and self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        try:
            if self.protocol == mqtt.MQTTv5:
                self.client.connect(
                    broker.host, broker.port, keepalive=30, clean_start=not persistent, properties=properties
                )
            else:  # MQTT 3.1/3.1.1: the session's persistence is chosen when the client is made
                self.client.connect(broker.host, broker.port, keepalive=30)
        except (ssl.SSLError, OSError) as error:
            self.refusal = error
            return False
        self.client.loop_start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.connected.wait(0.02):
                return True
            if self.closed.is_set():
                return False
        raise AssertionError(f"{self.client_id}: the broker neither accepted nor refused within {WAIT_S}s")

    def wait_ack(self, mid: int) -> ReasonCode:
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, WAIT_S), f"no ack for mid {mid}"
            return self.acks[mid]

    def subscribe(self, *topics: str) -> None:
        for topic, reason in zip(topics, self.try_subscribe(*topics), strict=True):
            assert not reason.is_failure, (topic, reason)

    def try_subscribe(self, *topics: str) -> list[ReasonCode]:
        """One SUBSCRIBE; the broker's reason code for each topic."""
        _, mid = self.client.subscribe([(topic, 1) for topic in topics])
        self.wait_ack(mid)
        return self.granted[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self.wait_ack(info.mid)

    def expect(self, matches: Callable[[mqtt.MQTTMessage], bool]) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(message)
            if matches(message):
                return message
        raise AssertionError(f"{self.client_id} did not receive the expected message within {WAIT_S}s")

    def received(self, payload: bytes) -> bool:
        return any(message.payload == payload for message in self.seen)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[Callable[[str], Probe]]:
    started: list[Probe] = []

    def make(client_id: str, protocol: int = mqtt.MQTTv5) -> Probe:
        probe = Probe(client_id, protocol)
        started.append(probe)
        return probe

    yield make
    for probe in started:
        probe.stop()


@pytest.fixture
def bridge(broker: Broker, probes: Callable[[str], Probe]) -> Probe:
    probe = probes(f"aegis-bridge-{uuid.uuid4().hex[:8]}")
    assert probe.start(broker, broker.bridge)
    probe.subscribe(*mosquitto.bridge_subscriptions(), "aegis/agents/+/inbox")
    return probe


def agent(broker: Broker, probes: Callable[[str], Probe], agent_id: str) -> Probe:
    probe = probes(agent_id)
    assert probe.start(broker, broker.agents[agent_id]), f"{agent_id} was refused; see {broker.log}"
    return probe


def token(label: str) -> bytes:
    return f'{{"v": 1, "id": "{uuid.uuid4()}", "type": "{label}"}}'.encode()


def is_payload(payload: bytes) -> Callable[[mqtt.MQTTMessage], bool]:
    return lambda message: message.payload == payload


def test_agent_with_its_own_certificate_connects_with_nodelay(broker, probes):
    probe = agent(broker, probes, "agent-a")
    sock = probe.client.socket()
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.getpeercert() is not None


def test_client_without_certificate_is_refused(broker, probes):
    assert not probes("agent-a").start(broker, None)


def test_client_with_certificate_from_another_ca_is_refused(broker, probes):
    assert not probes("agent-a").start(broker, broker.foreign)


def test_plain_tcp_is_refused(broker, probes):
    assert not probes("agent-a").start(broker, None, tls=False)


def test_agent_events_reach_the_bridge_through_the_shared_subscription(broker, probes, bridge):
    agent_a = agent(broker, probes, "agent-a")
    event = token("task.accepted")
    assert agent_a.publish("aegis/agents/agent-a/events", event).value == 0
    message = bridge.expect(is_payload(event))
    assert message.topic == "aegis/agents/agent-a/events"


def test_agent_cannot_publish_on_another_agents_topics(broker, probes, bridge):
    agent_a = agent(broker, probes, "agent-a")
    forged = {suffix: token(f"forged-{suffix}") for suffix in ("hello", "heartbeat", "status", "events", "logs")}
    for suffix, payload in forged.items():
        assert agent_a.publish(f"aegis/agents/agent-b/{suffix}", payload).value == NOT_AUTHORIZED
    assert agent_a.publish("aegis/agents/agent-b/inbox", token("forged-inbox")).value == NOT_AUTHORIZED
    marker = token("marker")
    assert agent_a.publish("aegis/agents/agent-a/logs", marker).value == 0  # its own output topic: allowed
    bridge.expect(is_payload(marker))
    assert not any(bridge.received(payload) for payload in forged.values())


def test_claiming_the_bridge_username_is_refused(broker, probes, bridge):
    impostor = probes("agent-a")
    impostor.client.username_pw_set("aegis-bridge")
    assert not impostor.start(broker, broker.agents["agent-a"])
    honest = probes("agent-a")
    honest.client.username_pw_set("agent-a")  # sending its own CN as username is allowed
    assert honest.start(broker, broker.agents["agent-a"])


# What an agent identity tries to subscribe to beyond its inbox and the broadcast.
FORBIDDEN_SUBSCRIPTIONS = (
    "aegis/agents/agent-b/inbox",
    "aegis/agents/+/inbox",
    "aegis/#",
    "#",
    "aegis/agents/agent-a/#",
    "aegis/agents/agent-a/events",
    "$share/aegis/aegis/agents/+/events",
    "$share/aegis/aegis/agents/+/hello",
    "$share/aegis/aegis/agents/+/status",
    "$share/aegis/aegis/agents/+/heartbeat",
    "$share/aegis/aegis/agents/agent-a/inbox",
    "$share/other/aegis/agents/+/events",
    "$SYS/#",
)


def test_agent_subscriptions_outside_its_inbox_and_the_broadcast_are_refused(broker, probes):
    agent_a = agent(broker, probes, "agent-a")
    reasons = agent_a.try_subscribe(*FORBIDDEN_SUBSCRIPTIONS)
    answered = {topic: reason.value for topic, reason in zip(FORBIDDEN_SUBSCRIPTIONS, reasons, strict=True)}
    assert answered == dict.fromkeys(FORBIDDEN_SUBSCRIPTIONS, NOT_AUTHORIZED)
    granted = agent_a.try_subscribe("aegis/agents/agent-a/inbox", "aegis/broadcast")
    assert [reason.is_failure for reason in granted] == [False, False]


def test_agent_cannot_read_another_agents_inbox(broker, probes, bridge):
    agent_a = agent(broker, probes, "agent-a")
    agent_b = agent(broker, probes, "agent-b")
    reasons = agent_a.try_subscribe("aegis/agents/agent-b/inbox", "aegis/agents/+/inbox", "aegis/#")
    assert [reason.value for reason in reasons] == [NOT_AUTHORIZED] * 3
    agent_a.subscribe("aegis/agents/agent-a/inbox")
    agent_b.subscribe("aegis/agents/agent-b/inbox")
    for_b, marker = token("task.assign"), token("ping")
    assert bridge.publish("aegis/agents/agent-b/inbox", for_b).value == 0
    assert bridge.publish("aegis/agents/agent-a/inbox", marker).value == 0
    agent_b.expect(is_payload(for_b))
    agent_a.expect(is_payload(marker))
    assert not agent_a.received(for_b)


# The SUBACK of MQTT 3.1 cannot say "refused" (Mosquitto answers "granted" and does not subscribe),
# MQTT 3.1.1 answers 0x80: what counts is that the bridge still gets every message.
REFUSED_SUBACK = {mqtt.MQTTv5: NOT_AUTHORIZED, mqtt.MQTTv311: 0x80, mqtt.MQTTv31: None}


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311, mqtt.MQTTv31], ids=["mqtt5", "mqtt311", "mqtt31"])
def test_an_agent_joining_the_bridges_shared_subscription_takes_nothing(broker, probes, bridge, protocol):
    """The attack of issue 13: with the SUBSCRIBE granted, Mosquitto round-robins the group's
    messages to the attacker and its ACL then drops them; 870 of 2,440 events vanished."""
    group_topics = list(mosquitto.bridge_subscriptions())
    attacker = probes("agent-a", protocol)
    assert attacker.start(broker, broker.agents["agent-a"], persistent=True)
    offline_reasons = attacker.try_subscribe(*group_topics)
    attacker.stop()  # a persistent session would go on taking its share while offline
    online = probes("agent-a", protocol)
    assert online.start(broker, broker.agents["agent-a"], persistent=True)
    online_reasons = online.try_subscribe(*group_topics)

    sender = agent(broker, probes, "agent-b")
    events = [token(f"task.progress-{index}") for index in range(200)]
    for event in events:
        assert sender.publish("aegis/agents/agent-b/events", event).value == 0
    marker = token("marker")
    assert bridge.publish("aegis/agents/agent-b/inbox", marker).value == 0  # the bridge reads inboxes too
    bridge.expect(is_payload(marker))
    received = {message.payload for message in bridge.seen}
    lost = [event for event in events if event not in received]
    assert lost == [], f"{len(lost)} of {len(events)} events went to the attacker"
    if REFUSED_SUBACK[protocol] is not None:
        refused = [REFUSED_SUBACK[protocol]] * 2 * len(group_topics)
        assert [reason.value for reason in offline_reasons + online_reasons] == refused


def test_an_agent_cannot_take_over_another_agents_session(broker, probes, bridge):
    """agent-a's certificate with agent-b's client id: refused, agent-b stays connected, and
    agent-b's queued assignment waits for agent-b (5 of 5 takeovers worked before)."""
    victim = probes("agent-b")
    assert victim.start(broker, broker.agents["agent-b"], persistent=True)
    victim.subscribe("aegis/agents/agent-b/inbox")
    for _ in range(5):
        thief = probes("agent-b")
        assert not thief.start(broker, broker.agents["agent-a"], persistent=True)
    assert not victim.closed.is_set(), "the victim was disconnected"
    marker = token("ping")
    assert bridge.publish("aegis/agents/agent-b/inbox", marker).value == 0
    victim.expect(is_payload(marker))

    victim.stop()  # offline, session kept: assignments queue in it
    queued = token("task.assign")
    assert bridge.publish("aegis/agents/agent-b/inbox", queued).value == 0
    thief = probes("agent-b")
    assert not thief.start(broker, broker.agents["agent-a"], persistent=True)
    assert not thief.received(queued)
    back = probes("agent-b")
    assert back.start(broker, broker.agents["agent-b"], persistent=True)
    back.expect(is_payload(queued))


def test_client_ids_are_bound_to_the_certificate(broker, probes):
    assert not probes("").start(broker, broker.agents["agent-a"])  # a server-assigned id is not the CN
    assert not probes("agent-a-2").start(broker, broker.agents["agent-a"])
    assert not probes("aegis-bridge-x").start(broker, broker.agents["agent-a"])
    # The bridge's certificate serves every bridge and dispatcher replica: "aegis-bridge" or "aegis-bridge-...".
    assert probes("aegis-bridge-replica-2").start(broker, broker.bridge)
    assert not probes("agent-a").start(broker, broker.bridge)
    assert not probes("aegis-bridgeX").start(broker, broker.bridge)


def test_agent_receives_its_inbox_and_the_broadcast(broker, probes, bridge):
    agent_a = agent(broker, probes, "agent-a")
    agent_a.subscribe("aegis/agents/agent-a/inbox", "aegis/broadcast")
    assignment, notice = token("task.assign"), token("notice")
    assert bridge.publish("aegis/agents/agent-a/inbox", assignment).value == 0
    assert bridge.publish("aegis/broadcast", notice).value == 0
    assert agent_a.expect(is_payload(assignment)).topic == "aegis/agents/agent-a/inbox"
    assert agent_a.expect(is_payload(notice)).topic == "aegis/broadcast"


def test_agent_cannot_broadcast(broker, probes):
    agent_a = agent(broker, probes, "agent-a")
    assert agent_a.publish("aegis/broadcast", token("notice")).value == NOT_AUTHORIZED


def test_last_will_marks_the_agent_offline_when_its_socket_drops(broker, probes, bridge):
    will_topic = "aegis/agents/agent-w/status"
    offline = token("status-offline")
    agent_w = probes("agent-w")
    agent_w.client.will_set(will_topic, offline, qos=1, retain=True)
    assert agent_w.start(broker, broker.agents["agent-w"])
    online = token("status-online")
    assert agent_w.publish(will_topic, online, retain=True).value == 0
    bridge.expect(is_payload(online))

    agent_w.client.loop_stop()
    sock = agent_w.client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet: what a crash or a cut cable looks like
    sock.close()

    assert bridge.expect(is_payload(offline)).topic == will_topic
    late_reader = probes(f"aegis-bridge-{uuid.uuid4().hex[:8]}")
    assert late_reader.start(broker, broker.bridge)
    late_reader.subscribe(will_topic)
    retained = late_reader.expect(lambda message: message.topic == will_topic)
    assert retained.payload == offline
    assert retained.retain
