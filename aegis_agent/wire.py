"""The agent's side of wire protocol version 1: topics, envelopes, inbox parsing.

The control plane validates what agents send with its own schemas (``broker/``);
this module must stay importable without Django, so it repeats the shapes here.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
# The largest decoded chunk of task output one task.log carries (the server refuses more: too_long).
MAX_LOG_CHUNK_BYTES = 16 * 1024
LOG_STREAMS = ("stdout", "stderr", "system")
BROADCAST_TOPIC = "aegis/broadcast"
# A hello lists a finished task until its result reached a subscriber, and this long after: with several
# bridges one can apply the hello before another applies the result it took from the broker first.
FINISHED_LISTED_S = 30.0

# Task ids are echoed back exactly as the server sent them (the server uses integers).
TaskId = int | str
TaskKey = tuple[TaskId, int]


class ProtocolError(ValueError):
    """An inbox message that does not follow protocol v1; it is logged and dropped."""


class MessageTooLarge(ValueError):
    """An outgoing message would exceed the broker's size limit."""


@dataclass(frozen=True)
class Topics:
    agent_id: str

    @property
    def hello(self) -> str:
        return f"aegis/agents/{self.agent_id}/hello"

    @property
    def heartbeat(self) -> str:
        return f"aegis/agents/{self.agent_id}/heartbeat"

    @property
    def status(self) -> str:
        return f"aegis/agents/{self.agent_id}/status"

    @property
    def events(self) -> str:
        return f"aegis/agents/{self.agent_id}/events"

    @property
    def logs(self) -> str:
        return f"aegis/agents/{self.agent_id}/logs"

    @property
    def inbox(self) -> str:
        return f"aegis/agents/{self.agent_id}/inbox"


# --- outgoing -----------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(message_type: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": uuid.uuid4().hex, "ts": now_rfc3339(), "type": message_type, **fields}


def encode(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"{message.get('type')} message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    return data


def running_list(keys: Iterable[TaskKey]) -> list[dict[str, Any]]:
    return [{"task_id": task_id, "attempt": attempt} for task_id, attempt in keys]


def hello(
    agent_version: str,
    capabilities: list[str],
    labels: Mapping[str, str],
    max_concurrency: int,
    running: Iterable[TaskKey],
    finished: Iterable[TaskKey] = (),
) -> dict[str, Any]:
    """``finished``: tasks whose result the agent has not seen reach a subscriber; the server waits for it."""
    return envelope(
        "hello",
        agent_version=agent_version,
        capabilities=list(capabilities),
        labels=dict(labels),
        max_concurrency=max_concurrency,
        running=running_list(running),
        finished=running_list(finished),
    )


def heartbeat(seq: int, running: Iterable[TaskKey], load: float | None = None) -> dict[str, Any]:
    message = envelope("heartbeat", seq=seq, running=running_list(running))
    if load is not None:
        message["load"] = load
    return message


def status(state: str) -> dict[str, Any]:
    if state not in ("online", "offline"):
        raise ValueError(f"status state must be online or offline, not {state!r}")
    return envelope("status", state=state)


def task_accepted(task_id: TaskId, attempt: int) -> dict[str, Any]:
    return envelope("task.accepted", task_id=task_id, attempt=attempt)


def task_rejected(task_id: TaskId, attempt: int, reason: str) -> dict[str, Any]:
    return envelope("task.rejected", task_id=task_id, attempt=attempt, reason=reason)


def task_progress(task_id: TaskId, attempt: int, progress: Mapping[str, Any]) -> dict[str, Any]:
    return envelope("task.progress", task_id=task_id, attempt=attempt, progress=dict(progress))


def task_succeeded(task_id: TaskId, attempt: int, result: Mapping[str, Any]) -> dict[str, Any]:
    return envelope("task.succeeded", task_id=task_id, attempt=attempt, result=dict(result))


def task_failed(task_id: TaskId, attempt: int, code: str, message: str, retryable: bool) -> dict[str, Any]:
    return envelope(
        "task.failed",
        task_id=task_id,
        attempt=attempt,
        error={"code": code, "message": message},
        retryable=retryable,
    )


def _is_plain_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def task_log(task_id: int, attempt: int, seq: int, stream: str, data: bytes) -> bytes:
    """One chunk of a task's output as an encoded task.log message (docs/protocol.md).

    The chunk travels as text when it is valid UTF-8 without NUL, else as base64, so any bytes survive.
    """
    if stream not in LOG_STREAMS:
        raise ValueError(f"stream must be one of {LOG_STREAMS}, not {stream!r}")
    if len(data) > MAX_LOG_CHUNK_BYTES:
        raise MessageTooLarge(f"task.log chunk is {len(data)} bytes, over {MAX_LOG_CHUNK_BYTES}")
    if seq < 1:
        raise ValueError(f"seq starts at 1, not {seq}")
    fields: dict[str, Any] = {"task_id": task_id, "attempt": attempt, "seq": seq, "stream": stream}
    if _is_plain_text(data):
        fields["data"] = data.decode("utf-8")
    else:
        fields["data"] = base64.b64encode(data).decode("ascii")
        fields["encoding"] = "base64"
    return encode(envelope("task.log", **fields))


# --- incoming -----------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    id: TaskId
    attempt: int
    job_id: TaskId | None
    kind: str
    payload: Any
    timeout_s: float | None
    lease_s: float | None

    @property
    def key(self) -> TaskKey:
        return (self.id, self.attempt)


@dataclass(frozen=True)
class Assign:
    message_id: str
    task: TaskSpec


@dataclass(frozen=True)
class Cancel:
    message_id: str
    task_id: TaskId
    attempt: int
    force: bool


@dataclass(frozen=True)
class Drain:
    message_id: str


@dataclass(frozen=True)
class Ping:
    message_id: str
    hello: bool = False  # the server does not know this agent: answer with a hello, not a heartbeat


@dataclass(frozen=True)
class Resume:
    message_id: str


InboxMessage = Assign | Cancel | Drain | Resume | Ping


def _task_id(value: Any, name: str) -> TaskId:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ProtocolError(f"{name} must be an integer or a non-empty string")
    return value


def _attempt(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError("attempt must be a non-negative integer")
    return value


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProtocolError(f"{name} must be a non-negative number or null")
    return float(value) if value > 0 else None


def _parse_task(raw: Any) -> TaskSpec:
    if not isinstance(raw, dict):
        raise ProtocolError("task.assign needs a 'task' object")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("task.kind must be a non-empty string")
    job_id = raw.get("job_id")
    return TaskSpec(
        id=_task_id(raw.get("id"), "task.id"),
        attempt=_attempt(raw.get("attempt")),
        job_id=None if job_id is None else _task_id(job_id, "task.job_id"),
        kind=kind,
        payload=raw.get("payload"),
        timeout_s=_seconds(raw.get("timeout_s"), "task.timeout_s"),
        lease_s=_seconds(raw.get("lease_s"), "task.lease_s"),
    )


def parse_inbox(data: bytes) -> InboxMessage:
    """Parse a message from the inbox or the broadcast topic; raises ProtocolError."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    message_id = message.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise ProtocolError("id must be a non-empty string")
    ts = message.get("ts")
    try:
        datetime.fromisoformat(ts) if isinstance(ts, str) else None
    except ValueError:
        ts = None
    if ts is None:
        raise ProtocolError("ts must be an RFC 3339 timestamp")
    message_type = message.get("type")
    if message_type == "task.assign":
        return Assign(message_id, _parse_task(message.get("task")))
    if message_type == "task.cancel":
        force = message.get("force", False)
        if not isinstance(force, bool):
            raise ProtocolError("force must be a boolean")
        return Cancel(message_id, _task_id(message.get("task_id"), "task_id"), _attempt(message.get("attempt")), force)
    if message_type == "agent.drain":
        return Drain(message_id)
    if message_type == "agent.resume":
        return Resume(message_id)
    if message_type == "ping":
        hello = message.get("hello", False)
        if not isinstance(hello, bool):
            raise ProtocolError("hello must be a boolean")
        return Ping(message_id, hello)
    raise ProtocolError(f"unknown message type {message_type!r}")
