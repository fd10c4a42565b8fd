"""One simulated agent: protocol v1 on the multiplexer's loop thread, tasks as timers.

It behaves like the reference agent where the server can tell: a hello lists the
finished tasks whose result has not reached a subscriber yet, and a cancel stops
the task and frees its slot at once. With the fleet's ``OutputSpec`` a task prints
output (``task.log`` on the agent's logs topic) at a chosen rate before its result.
"""

from __future__ import annotations

import logging
import random
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

# Per simulated agent: the last results (re-sent on a duplicate assign, listed in hellos until delivered)
# and the latest attempt per task (an older attempt's assign is ignored). A real agent is one process and
# keeps 1,000 and 10,000 (aegis_agent.agent); a simulator holds hundreds of agents, and the soak's hour
# showed its memory climbing toward 256 results per agent while the attempts grew without bound.
_REMEMBERED_FINISHED = 64
_REMEMBERED_ATTEMPTS = 1024
MIN_OUTPUT_CHUNK_BYTES = 128  # room for a chunk's header line


@dataclass(frozen=True)
class OutputSpec:
    """What every simulated task prints before its result (issue 17's output benchmarks, ``bench/task_logs.py``).

    ``bytes_per_task`` 0 prints nothing. ``rate_bps`` is the pace of each task's output in bytes per second
    (0: as fast as the window allows); ``chunk_bytes`` the size of a chunk (the last one may be shorter);
    ``stderr_fraction`` the share of chunks written to stderr, the rest to stdout. At most ``window`` chunks
    of a task wait for their PUBACK at once, so a fast task never piles its output up in memory, and the
    result is published once every chunk reached the broker.

    Each chunk is log-like ASCII text that starts with a header line naming the stream, task, attempt and
    seq and the wall-clock time of the publish, ``t=<unix seconds>``: a reader measures its lag from it.
    """

    bytes_per_task: int = 0
    rate_bps: float = 0.0
    chunk_bytes: int = 4096
    stderr_fraction: float = 0.0
    window: int = 32

    def __post_init__(self) -> None:
        if self.bytes_per_task < 0:
            raise ValueError("output bytes per task must not be negative")
        if self.rate_bps < 0:
            raise ValueError("output rate must not be negative (0: unpaced)")
        if not MIN_OUTPUT_CHUNK_BYTES <= self.chunk_bytes <= wire.MAX_LOG_CHUNK_BYTES:
            raise ValueError(
                f"output chunk size must be {MIN_OUTPUT_CHUNK_BYTES}..{wire.MAX_LOG_CHUNK_BYTES} bytes, "
                f"not {self.chunk_bytes}"
            )
        if not 0.0 <= self.stderr_fraction <= 1.0:
            raise ValueError("the output stderr fraction must be between 0 and 1")
        if self.window < 1:
            raise ValueError("the output window of unacknowledged chunks must be at least 1")


def filler_text(rng: random.Random, size: int = 256 * 1024) -> bytes:
    """Log-like lines (levels, components, ids, timings) to cut chunks from: about as compressible as real logs."""
    levels, components = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"), ("fetch", "build", "test", "upload")
    lines, total = [], 0
    while total < size:
        line = (
            f"{rng.choice(levels)} {rng.choice(components)}[{rng.randrange(16)}] step {rng.randrange(100000)} "
            f"item {rng.getrandbits(64):016x} took {rng.uniform(0, 500):.1f} ms\n"
        )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


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
    log_chunks: int = 0
    log_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Output:
    """How far a running task got with its output; touched on the loop thread only."""

    started: float  # the loop's clock when the task was accepted
    sent: int = 0  # bytes published
    seq: int = 0  # the last seq published: gap-free from 1 per (task, attempt), over both streams
    unacked: int = 0  # chunks published whose PUBACK has not come back
    waiting: bool = False  # paused until a PUBACK frees the window


@dataclass
class Running:
    task: wire.TaskSpec
    timer: Any  # asyncio.TimerHandle: the task's next step (a chunk or its result); cancel() stops the task
    output: Output | None = None


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
    latest_attempt: OrderedDict[TaskId, int] = field(default_factory=OrderedDict)
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
        self.latest_attempt.move_to_end(task.id)
        while len(self.latest_attempt) > _REMEMBERED_ATTEMPTS:
            self.latest_attempt.popitem(last=False)
        fleet.stats.accepted += 1
        self._event(wire.task_accepted(task.id, task.attempt))
        duration = fleet.duration_s
        if task.kind == "sleep" and isinstance(task.payload, dict):
            seconds = task.payload.get("seconds")
            if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
                duration = float(seconds)
        loop = fleet.mux.loop
        if fleet.output.bytes_per_task > 0 and isinstance(task.id, int):  # the server's task ids are integers
            running = self.running[key] = Running(task, None, Output(started=loop.time()))
            running.timer = loop.call_later(0, self._print, task, duration)
        else:
            self.running[key] = Running(task, loop.call_later(duration, self._complete, task))

    def _print(self, task: wire.TaskSpec, duration: float) -> None:
        """Publish the task's next chunks (as the pace and the window allow); the result follows the last PUBACK."""
        running = self.running.get(task.key)
        if running is None or running.output is None:  # canceled, or replaced by a newer attempt
            return
        output, spec, loop = running.output, self.fleet.output, self.fleet.mux.loop
        while output.sent < spec.bytes_per_task:
            if output.unacked >= spec.window:
                output.waiting = True
                return
            if spec.rate_bps > 0:
                due = output.started + output.sent / spec.rate_bps
                if due > loop.time():
                    running.timer = loop.call_later(due - loop.time(), self._print, task, duration)
                    return
            self._publish_chunk(task, output, duration)
        if output.unacked:
            output.waiting = True
            return
        remaining = max(0.0, output.started + duration - loop.time())
        running.timer = loop.call_later(remaining, self._complete, task)

    def _publish_chunk(self, task: wire.TaskSpec, output: Output, duration: float) -> None:
        fleet, spec = self.fleet, self.fleet.output
        output.seq += 1
        size = min(spec.chunk_bytes, spec.bytes_per_task - output.sent)
        stream = "stderr" if spec.stderr_fraction and fleet.random.random() < spec.stderr_fraction else "stdout"
        data = fleet.output_chunk(task.key, output.seq, stream, size)
        payload = wire.task_log(int(task.id), task.attempt, output.seq, stream, data)

        def delivered() -> None:  # on the thread that reads the PUBACK: the loop thread here
            output.unacked -= 1
            if output.waiting:
                output.waiting = False
                fleet.mux.loop.call_soon(self._print, task, duration)

        output.unacked += 1
        output.sent += size
        self._publish(self.topics.logs, payload, on_delivered=delivered)
        fleet.stats.log_chunks += 1
        fleet.stats.log_bytes += size

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
