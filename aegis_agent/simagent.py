"""One simulated agent: protocol v1 on the multiplexer's loop thread, tasks as timers.

It behaves like the reference agent where the server can tell: a hello lists the
finished tasks whose result has not reached a subscriber yet, and a cancel stops
the task and frees its slot at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from aegis_agent import __version__, connection, wire
from aegis_agent.multiplex import Session
from aegis_agent.redelivery import redelivery
from aegis_agent.wire import FINISHED_LISTED_S, TaskId, TaskKey

if TYPE_CHECKING:
    from aegis_agent.simulate import Fleet

log = logging.getLogger(__name__)

_REMEMBERED_FINISHED = 256


@dataclass
class FleetStats:
    """Counters, updated on the loop thread; read them for reports (plain ints, no locking needed)."""

    connects: int = 0
    hellos: int = 0
    heartbeats: int = 0
    accepted: int = 0
    rejected: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    invalid: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Running:
    task: wire.TaskSpec
    timer: Any  # asyncio.TimerHandle


@dataclass
class Final:
    """A terminal event, listed in hellos until a subscriber got it (and for FINISHED_LISTED_S after)."""

    payload: bytes
    published: bool = False  # False: finished while disconnected, published on the next connect
    delivered_at: float | None = None  # time.monotonic(); set on the loop thread, which reads the PUBACKs

    def delivered(self) -> None:
        self.delivered_at = time.monotonic()

    def unacknowledged(self, now: float) -> bool:
        return self.delivered_at is None or now - self.delivered_at < FINISHED_LISTED_S


@dataclass
class SimAgent:
    fleet: Fleet
    agent_id: str
    client: mqtt.Client
    topics: wire.Topics
    session: Session | None = None
    online: bool = False
    draining: bool = False
    seq: int = 0
    running: dict[TaskKey, Running] = field(default_factory=dict)
    latest_attempt: dict[TaskId, int] = field(default_factory=dict)
    finished: OrderedDict[TaskKey, Final] = field(default_factory=OrderedDict)
    heartbeat_timer: Any = None

    # --- multiplexer listener -------------------------------------------------------

    def prepare_connect(self) -> None:
        connection.offline_will(self.client, self.topics)

    def _publish(self, topic: str, payload: bytes, retain: bool = False, **track: Any) -> mqtt.MQTTMessageInfo:
        """QoS 1, published again if the broker routes it to nobody; re-publishes run on the fleet's loop."""
        return redelivery.publish(self.client, topic, payload, retain, runner=self.fleet.mux.call, **track)

    def _hello(self) -> bytes:
        fleet, now = self.fleet, time.monotonic()
        finished = [key for key, final in self.finished.items() if final.unacknowledged(now)]
        message = wire.hello(
            __version__, fleet.capabilities, fleet.labels, fleet.max_concurrency, list(self.running), finished
        )
        return wire.encode(message)

    def send_hello(self) -> None:
        # Rebuilt for every try while nobody subscribes: a hello says what the agent holds now.
        self._publish(self.topics.hello, self._hello(), rebuild=self._hello)
        self.fleet.stats.hellos += 1

    def _publish_final(self, final: Final) -> None:
        final.published = True
        self._publish(self.topics.events, final.payload, on_delivered=final.delivered)

    def connected(self, session_present: bool) -> None:
        fleet, client = self.fleet, self.client
        self.online = True
        fleet.stats.connects += 1
        client.subscribe([(self.topics.inbox, 1), (wire.BROADCAST_TOPIC, 1)])
        self._publish(self.topics.status, fleet.status_online(), retain=True)
        self.send_hello()  # it lists the results below as finished, so the server waits for them
        for final in self.finished.values():
            if not final.published:  # finished while disconnected
                self._publish_final(final)
        if self.heartbeat_timer is None:
            delay = fleet.random.uniform(0, fleet.heartbeat_s)  # spread the fleet's heartbeats
            self.heartbeat_timer = fleet.mux.loop.call_later(delay, self._heartbeat)

    def disconnected(self) -> None:
        self.online = False

    # --- protocol ----------------------------------------------------------------------

    def _held(self) -> list[TaskKey]:
        now = time.monotonic()
        return [*self.running, *(key for key, final in self.finished.items() if final.unacknowledged(now))]

    def _heartbeat(self) -> None:
        self.heartbeat_timer = self.fleet.mux.loop.call_later(self.fleet.heartbeat_s, self._heartbeat)
        self.send_heartbeat()

    def send_heartbeat(self) -> None:
        if not self.online:
            return
        self.seq += 1
        message = wire.heartbeat(self.seq, self._held())
        self.client.publish(self.topics.heartbeat, wire.encode(message), qos=self.fleet.heartbeat_qos)
        self.fleet.stats.heartbeats += 1

    def _event(self, message: dict[str, Any]) -> None:
        if self.online:
            self._publish(self.topics.events, wire.encode(message))

    def on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        fleet = self.fleet
        if message.topic not in (self.topics.inbox, wire.BROADCAST_TOPIC):
            # Not a topic this agent subscribed to (a broker that sends retained messages of other clients'
            # subscriptions, as amqtt did): never read as a command to run.
            fleet.stats.ignored += 1
            log.debug("%s ignored a message on %s, not its inbox", self.agent_id, message.topic)
            return
        try:
            parsed = wire.parse_inbox(message.payload)
        except wire.ProtocolError as exc:
            fleet.stats.invalid += 1
            log.warning("%s dropped invalid message on %s: %s", self.agent_id, message.topic, exc)
            return
        if isinstance(parsed, wire.Ping):
            if parsed.hello:
                self.send_hello()
            else:
                self.send_heartbeat()
        elif isinstance(parsed, wire.Drain):
            self.draining = True
        elif isinstance(parsed, wire.Resume):
            self.draining = False
        elif message.topic == wire.BROADCAST_TOPIC:
            fleet.stats.ignored += 1
        elif isinstance(parsed, wire.Assign):
            self._assign(parsed.task)
        elif isinstance(parsed, wire.Cancel):
            running = self.running.get((parsed.task_id, parsed.attempt))
            if running is not None:
                running.timer.cancel()
                fleet.stats.canceled += 1
                self._finish(running.task, wire.task_failed(*running.task.key, "canceled", "canceled", False))

    def _assign(self, task: wire.TaskSpec) -> None:
        fleet = self.fleet
        key = task.key
        if key in self.running:
            fleet.stats.ignored += 1
            return
        final = self.finished.get(key)
        if final is not None:
            fleet.stats.ignored += 1
            if self.online:  # re-send the result under its original message id
                self._publish_final(final)
            return
        latest = self.latest_attempt.get(task.id)
        if latest is not None and task.attempt < latest:
            fleet.stats.ignored += 1
            return
        reason = None
        if self.draining:
            reason = "draining"
        elif task.kind not in fleet.capabilities:
            reason = "unknown_kind"
        elif len(self.running) >= fleet.max_concurrency:
            reason = "at_capacity"
        if reason is not None:
            fleet.stats.rejected += 1
            self._event(wire.task_rejected(task.id, task.attempt, reason))
            return
        previous = self.running.pop((task.id, latest), None) if latest is not None else None
        if previous is not None:
            previous.timer.cancel()
        self.latest_attempt[task.id] = task.attempt
        fleet.stats.accepted += 1
        self._event(wire.task_accepted(task.id, task.attempt))
        duration = fleet.duration_s
        if task.kind == "sleep" and isinstance(task.payload, dict):
            seconds = task.payload.get("seconds")
            if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
                duration = float(seconds)
        timer = fleet.mux.loop.call_later(duration, self._complete, task)
        self.running[key] = Running(task, timer)

    def _complete(self, task: wire.TaskSpec) -> None:
        fleet = self.fleet
        if fleet.failure_rate and fleet.random.random() < fleet.failure_rate:
            fleet.stats.failed += 1
            final = wire.task_failed(task.id, task.attempt, "simulated_failure", "simulated failure", True)
        else:
            fleet.stats.succeeded += 1
            result = task.payload if isinstance(task.payload, dict) else {"value": task.payload}
            final = wire.task_succeeded(task.id, task.attempt, result if task.kind == "echo" else {})
        self._finish(task, final)

    def _finish(self, task: wire.TaskSpec, final: dict[str, Any]) -> None:
        self.running.pop(task.key, None)
        done = self.finished[task.key] = Final(wire.encode(final))
        if self.online:
            self._publish_final(done)
        while len(self.finished) > _REMEMBERED_FINISHED:
            self.finished.popitem(last=False)
