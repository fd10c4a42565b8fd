"""What a notification says: the webhook body (docs/notifications.md), a Slack line per event, an e-mail.

Every target renders the same ``Message``: one event, or a digest of several task.failed
events of one job (their ``data.tasks`` joined in event time order, ``count`` their number,
``id`` the leader's event id), so a receiver sees one shape either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from notify.models import Event, EventType


@dataclass(frozen=True)
class Message:
    """One notification's content, taken in the claim's transaction and sent after it."""

    event_id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any]
    occurred: tuple[datetime, ...] = field(default=())  # every event's time (a digest has several): the latency


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(leader: Event, merged: list[Event] | tuple[Event, ...] = ()) -> Message:
    """The message of ``leader``, with the task.failed events ``merged`` into it (a digest)."""
    if not merged:
        return Message(leader.id, leader.type, leader.occurred_at, leader.payload, (leader.occurred_at,))
    events = sorted([leader, *merged], key=lambda event: (event.occurred_at, event.id))
    tasks = [task for event in events for task in event.payload.get("tasks", [])]
    data = {**leader.payload, "tasks": tasks, "count": len(tasks)}
    return Message(leader.id, leader.type, leader.occurred_at, data, tuple(event.occurred_at for event in events))


def webhook_body(msg: Message) -> bytes:
    """The JSON body every webhook receives (UTF-8, compact: the signature covers these exact bytes)."""
    body = {"id": msg.event_id, "type": msg.type, "version": 1, "timestamp": rfc3339(msg.occurred_at), "data": msg.data}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=False).encode()


def _job(data: dict[str, Any]) -> str:
    job = data.get("job") or {}
    return f"job {job.get('id', '?')} ({job.get('kind', '?')})" if job else ""


def lines(msg: Message) -> list[str]:
    """One readable line per event (a digest: one per failed task)."""
    data = msg.data
    if msg.type == EventType.TASK_FAILED:
        out = []
        for task in data.get("tasks", []):
            error = task.get("error") or {}
            out.append(
                f"task {task.get('id')} of {_job(data)} failed on {task.get('agent_id') or 'no agent'} "
                f"(attempt {task.get('attempt')}): {error.get('code', '')} {error.get('message', '')}".rstrip()
            )
        return out or [f"task failed in {_job(data)}"]
    if msg.type.startswith("job."):
        outcome = data.get("outcome")
        suffix = f": {outcome}" if outcome else ""
        return [f"{_job(data)} {msg.type.removeprefix('job.')}{suffix}"]
    if msg.type.startswith("agent."):
        agent = data.get("agent") or {}
        name = agent.get("name") or agent.get("id", "?")
        return [f"agent {name} is {msg.type.removeprefix('agent.')}"]
    if msg.type == EventType.CERTIFICATE_EXPIRING:
        cert = data.get("certificate") or {}
        return [
            f"certificate of {cert.get('role', '?')} {cert.get('common_name', '?')} (serial {cert.get('serial', '?')}) "
            f"expires {cert.get('not_after', '?')}, in {cert.get('days_left', '?')} days"
        ]
    if msg.type == EventType.RECONCILIATION_STUCK:
        task = data.get("task") or {}
        what = data.get("title") or data.get("reason") or "needs reconciliation"
        return [f"task {task.get('id', '?')} of {_job(data)} stuck since {data.get('since') or '?'}: {what}"]
    return [f"{msg.type}: {json.dumps(data, ensure_ascii=False, sort_keys=True)[:300]}"]


def slack_body(msg: Message) -> bytes:
    """A Slack-compatible incoming-webhook body: ``{"text": …}``, one line per event."""
    text = "\n".join(f"[aegis] {line}" for line in lines(msg))
    return json.dumps({"text": text}, ensure_ascii=False).encode()


def email(msg: Message) -> tuple[str, str]:
    """Subject and plain-text body of the e-mail."""
    found = lines(msg)
    subject = f"[aegis] {msg.type}: {found[0]}" if len(found) == 1 else f"[aegis] {msg.type}: {len(found)} events"
    body = "\n".join(
        [
            *found,
            "",
            f"event {msg.event_id} at {rfc3339(msg.occurred_at)}",
            "",
            json.dumps(msg.data, ensure_ascii=False, indent=2, sort_keys=True),
        ]
    )
    return subject.replace("\n", " ")[:200], body
