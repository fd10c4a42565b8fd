"""Turning a batch of MQTT messages from agents into state changes. Runs in the bridge's Channels consumer.

Malformed messages are logged, counted (``aegis_mqtt_dropped_total``) and dropped
(acknowledged, never retried). Any other error propagates: the caller keeps the batch unacknowledged and tries
again, so nothing is lost while the database is away or a step fails.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from aegis_site.core import clock, counters, wakeup
from aegis_site.core.db import one_transaction
from broker.presence import HeartbeatBuffer
from broker.protocol import (
    AgentMessage,
    Heartbeat,
    Hello,
    ProtocolError,
    Status,
    TaskEvent,
    TaskLog,
    parse_agent_message,
    report_fields,
)
from registry import actions as registry_actions
from tasks import actions as task_actions
from tasks.engine.logs import DROPPED_STATUSES, Chunk
from tasks.engine.reports import Report

log = logging.getLogger("aegis.bridge")

_HEARTBEATS_IN = counters.MQTT_MESSAGES.labels("in", "heartbeat")  # the hot path: resolve the label once


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 1


@dataclass(slots=True)
class Decoded:
    """A batch decoded and validated, not yet applied: each message, or why it is not one.

    Decoding touches no database, so the bridge decodes the next batch while the
    previous one commits (``broker.bridge``); applying stays one batch at a time, in order.
    """

    items: list[Incoming] = field(default_factory=list)
    messages: list[AgentMessage | ProtocolError] = field(default_factory=list)

    def add(self, item: Incoming) -> None:
        self.items.append(item)
        try:
            self.messages.append(parse_agent_message(item.topic, item.payload))
        except ProtocolError as error:
            self.messages.append(error)

    def __len__(self) -> int:
        return len(self.items)


def decode(batch: Iterable[Incoming]) -> Decoded:
    decoded = Decoded()
    for item in batch:
        decoded.add(item)
    return decoded


def ingest(
    batch: Iterable[Incoming] | Decoded, heartbeats: HeartbeatBuffer, revoked: Container[str] = frozenset()
) -> int:
    """Apply a batch in arrival order; returns how many messages needed the database.

    Heartbeats only move a time in ``heartbeats`` (flushed later as one UPDATE);
    the rest is applied in one transaction.
    """
    decoded = batch if isinstance(batch, Decoded) else decode(batch)
    parsed: list[Hello | Status | TaskEvent] = []
    output: list[TaskLog] = []
    now = clock.now()
    for item, message in zip(decoded.items, decoded.messages, strict=True):
        if isinstance(message, ProtocolError):
            if message.code != "empty":  # a retained message being cleared: nothing to apply, nothing wrong
                drop(message.code, item.topic, message.message)
            continue
        if message.agent_id in revoked:
            drop("revoked_certificate", item.topic, f"agent {message.agent_id} has no live certificate")
            continue
        if isinstance(message, Heartbeat):  # the most frequent message touches memory only
            _HEARTBEATS_IN.inc()
            heartbeats.add(message.agent_id, now)
        elif isinstance(message, TaskLog):  # output is independent of the rest: one engine call for the batch
            output.append(message)
        else:
            parsed.append(message)
    if not parsed and not output:
        return 0
    # Any error propagates, not only a DatabaseError: the batch stays unacknowledged and the broker keeps it.
    # Only a message proven malformed (above) is acknowledged without being applied; a valid result that
    # met a bug or an outage is never dropped (the bridge backs off and, if it keeps failing, exits).
    with one_transaction():  # retried whole on any error: the actions inside join it without savepoints
        # Hellos and statuses change their agents in arrival order; the claims and the heartbeat flush lock
        # agents in id order. Taking those agents first, in id order, keeps one order everywhere (no deadlock).
        # Task events lock no agent row: a batch of results alone takes no agent lock.
        # Task output locks no agent row either, only the output summaries of its attempts (after the above).
        registry_actions.lock_agents(message.agent_id for message in parsed if not isinstance(message, TaskEvent))
        _apply_all(parsed)
        _apply_output(output)
    return len(parsed) + len(output)


def drop(reason: str, topic: str, detail: str) -> None:
    counters.MQTT_DROPPED.labels(reason).inc()
    log.warning("mqtt message dropped", extra={"reason": reason, "topic": topic[:200], "detail": detail[:300]})


def _apply_all(messages: list[Hello | Status | TaskEvent]) -> None:
    """Apply in arrival order per agent, set-based across agents.

    Order matters only within one agent (its hello before its later events), so task
    events wait in one list and hellos and statuses in another, and an agent is in at
    most one of them: a message of the other kind from an agent in a list applies that
    list first. A batch from many agents costs one engine call for its events and a few
    statements for its hellos and statuses (``_apply_controls``), not a few per agent:
    a reconnect storm (every agent's status and hello after a broker restart) stays cheap.
    """
    events: list[TaskEvent] = []
    controls: list[Hello | Status] = []
    in_events: set[str] = set()
    in_controls: set[str] = set()
    for message in messages:
        counters.MQTT_MESSAGES.labels("in", type(message).__name__.lower()).inc()
        if isinstance(message, TaskEvent):
            if message.agent_id in in_controls:
                _apply_controls(controls)
                controls, in_controls = [], set()
            events.append(message)
            in_events.add(message.agent_id)
        else:
            if message.agent_id in in_events:
                _apply_events(events)
                events, in_events = [], set()
            controls.append(message)
            in_controls.add(message.agent_id)
    if controls:
        _apply_controls(controls)
    if events:
        _apply_events(events)


def _apply_controls(controls: list[Hello | Status]) -> None:
    """Hellos and statuses in rounds: the n-th round applies each agent's n-th message, so an agent's own
    order holds while each round is set-based (one statement or two per kind, whatever the number of agents).
    """
    rounds: list[list[Hello | Status]] = []
    count: dict[str, int] = {}
    for message in controls:
        nth = count.get(message.agent_id, 0)
        count[message.agent_id] = nth + 1
        if nth == len(rounds):
            rounds.append([])
        rounds[nth].append(message)
    for messages in rounds:
        online = [m.agent_id for m in messages if isinstance(m, Status) and m.state == "online"]
        offline = [m.agent_id for m in messages if isinstance(m, Status) and m.state != "online"]
        if online:
            registry_actions.mark_agents_online(online)
            wakeup.notify_on_commit(agents=online)
        if offline:
            registry_actions.mark_agents_offline(offline, "agent went offline (status or Last Will)")
        hellos = [m for m in messages if isinstance(m, Hello)]
        if hellos:
            _apply_hellos(hellos)


def _apply_events(events: list[TaskEvent]) -> None:
    outcomes = task_actions.apply_agents_reports([(event.agent_id, Report(**report_fields(event))) for event in events])
    for event, outcome in zip(events, outcomes, strict=True):
        if outcome.status == "not_found":
            drop("unknown_task", f"aegis/agents/{event.agent_id}/events", f"task {event.task_id}")
        elif outcome.status == "duplicate":
            drop("duplicate", f"aegis/agents/{event.agent_id}/events", f"message {event.message_id}")


def _apply_output(chunks: list[TaskLog]) -> None:
    """Every chunk of the batch in one engine call; an unusable chunk is counted and dropped, never an error."""
    if not chunks:
        return
    counters.MQTT_MESSAGES.labels("in", "tasklog").inc(len(chunks))
    statuses = task_actions.store_task_output(
        [Chunk(c.agent_id, c.task_id, c.attempt, c.seq, c.stream, c.data) for c in chunks]
    )
    over_cap = 0
    for chunk, status in zip(chunks, statuses, strict=True):
        if status == "over_cap":  # after the truncation marker: counted, not logged one by one
            over_cap += 1
        elif status in DROPPED_STATUSES:
            drop(
                status,
                f"aegis/agents/{chunk.agent_id}/logs",
                f"task {chunk.task_id} attempt {chunk.attempt} seq {chunk.seq}",
            )
    if over_cap:
        counters.MQTT_DROPPED.labels("over_cap").inc(over_cap)


def _apply_hellos(hellos: list[Hello]) -> None:
    results = task_actions.agents_said_hello(
        [
            task_actions.AgentHello(
                registry_actions.HelloFacts(
                    hello.agent_id, hello.agent_version, list(hello.capabilities), hello.labels, hello.max_concurrency
                ),
                running={(r.task_id, r.attempt) for r in hello.running},
                finished=frozenset((r.task_id, r.attempt) for r in hello.finished),
            )
            for hello in hellos
        ]
    )
    for hello, result in zip(hellos, results, strict=True):
        if result.resent or result.lost or result.canceled:
            log.info(
                "reconciled agent on hello",
                extra={
                    "agent_id": hello.agent_id,
                    "resent": result.resent,
                    "lost": result.lost,
                    "finishing": result.finishing,
                },
            )
