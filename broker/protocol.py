"""Wire protocol version 1: MQTT topics, envelopes and the schema of every message.

Standard library only, so the bridge, the reference agent and the simulator share
one definition and this module imports without Django settings. Agent payloads are
untrusted: everything that can be wrong with one ends in ``ProtocolError`` with a
stable ``code`` (the bridge counts it in a metric and drops the message), never in
another exception that could stall the bridge or poison a database transaction.
Unknown fields are ignored so a version 1 peer may add optional fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast, get_args

from aegis_site.core import strict_json

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 256 * 1024

AGENT_ID_RE: Final = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,62}\Z")
BROADCAST_TOPIC: Final = "aegis/broadcast"
HELLO, HEARTBEAT, STATUS, EVENTS, INBOX = "hello", "heartbeat", "status", "events", "inbox"
LOGS: Final = "logs"  # task output: its own topic, so bulk output never queues results behind it
AGENT_CHANNELS: Final = (HELLO, HEARTBEAT, STATUS, EVENTS, LOGS)  # agent → server; ``inbox`` is server → agent

# Limits. Integers match the database columns they end up in (attempt is a smallint).
MAX_DEPTH: Final = strict_json.MAX_DEPTH  # nesting of the whole document, envelope included
MAX_MESSAGE_ID_CHARS: Final = 100  # tasks.TaskEvent.message_id
MAX_TASK_ID: Final = 2**63 - 1
MAX_ATTEMPT: Final = 32_767
MAX_SEQ: Final = 2**63 - 1
MAX_CONCURRENCY: Final = 10_000
MAX_RUNNING: Final = 1_000
MAX_CAPABILITIES: Final = 256
MAX_CAPABILITY_CHARS: Final = 100  # a capability is usually a task kind (tasks.Task.kind)
MAX_LABELS: Final = 64
MAX_LABEL_KEY_CHARS: Final = 63
MAX_LABEL_VALUE_CHARS: Final = 255
MAX_VERSION_CHARS: Final = 64  # registry.Agent.version
MAX_REASON_CHARS: Final = 1_000
MAX_ERROR_CODE_CHARS: Final = 100
MAX_ERROR_MESSAGE_CHARS: Final = 10_000
MAX_LOAD: Final = 1e6
MAX_LOG_CHUNK_BYTES: Final = 16 * 1024  # the decoded bytes of one task.log chunk

EventKind: TypeAlias = Literal["accepted", "progress", "succeeded", "failed", "rejected"]
EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)
AgentState: TypeAlias = Literal["online", "offline"]
LogStream: TypeAlias = Literal["stdout", "stderr", "system"]
LOG_STREAMS: Final[tuple[LogStream, ...]] = get_args(LogStream)
LOG_ENCODINGS: Final = ("utf-8", "base64")

ERROR_CODES: Final = (
    "bad_topic",  # not an agent → server topic, or the agent id in it is invalid
    "empty",  # zero bytes: a cleared retained message (ignore it rather than count it as malformed)
    "oversized",  # more than MAX_MESSAGE_BYTES
    "not_utf8",  # payload bytes are not UTF-8
    "not_json",  # not JSON (also NaN/Infinity, numbers out of float range, duplicate keys)
    "too_deep",  # nested deeper than MAX_DEPTH
    "bad_string",  # a key or string holds NUL or a lone surrogate (PostgreSQL refuses both)
    "not_object",  # the document is not a JSON object
    "bad_version",  # "v" missing or not 1
    "unknown_type",  # "type" is not an agent message type
    "wrong_topic",  # a known type published on the topic of another kind of message
    "agent_mismatch",  # the optional "agent_id" field names another agent than the topic
    "missing_field",  # a required field is absent
    "bad_field",  # a field has the wrong type, is out of bounds or malformed
    "too_long",  # a task.log chunk decodes to more than MAX_LOG_CHUNK_BYTES bytes
)


class ProtocolError(Exception):
    """A message that breaks the protocol. ``code`` is one of ``ERROR_CODES`` and never changes meaning."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


# --- topics -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topic:
    agent_id: str | None  # None for the broadcast topic
    channel: str  # hello | heartbeat | status | events | logs | inbox | broadcast


def agent_topic(agent_id: str, channel: str) -> str:
    if not AGENT_ID_RE.match(agent_id) or channel not in (*AGENT_CHANNELS, INBOX):
        raise ValueError(f"no such topic: agent {agent_id!r}, channel {channel!r}")
    return f"aegis/agents/{agent_id}/{channel}"


def inbox_topic(agent_id: str) -> str:
    return agent_topic(agent_id, INBOX)


def topic_filter(channel: str) -> str:
    """The subscription filter for one channel of every agent, e.g. ``aegis/agents/+/events``."""
    if channel not in (*AGENT_CHANNELS, INBOX):
        raise ValueError(f"no such channel: {channel!r}")
    return f"aegis/agents/+/{channel}"


def parse_topic(topic: str) -> Topic:
    if topic == BROADCAST_TOPIC:
        return Topic(None, "broadcast")
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["aegis", "agents"] or parts[3] not in (*AGENT_CHANNELS, INBOX):
        raise ProtocolError("bad_topic", f"not a protocol topic: {topic[:200]!r}")
    if not AGENT_ID_RE.match(parts[2]):
        raise ProtocolError("bad_topic", f"invalid agent id in topic: {parts[2][:100]!r}")
    return Topic(parts[2], parts[3])


# --- agent → server messages --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningTask:
    task_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Message:
    """What every agent message carries: who sent it (from the topic), its unique id and its send time."""

    agent_id: str
    message_id: str
    sent_at: datetime  # timezone-aware, the agent's clock


@dataclass(frozen=True, slots=True)
class Hello(Message):
    type: ClassVar[str] = "hello"
    agent_version: str
    capabilities: tuple[str, ...]
    labels: dict[str, str]
    max_concurrency: int
    running: tuple[RunningTask, ...]
    # Finished there, result not yet acknowledged: it is on its way (optional; older agents list these as running).
    finished: tuple[RunningTask, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    type: ClassVar[str] = "heartbeat"
    seq: int
    running: tuple[RunningTask, ...]
    load: float | None = None


@dataclass(frozen=True, slots=True)
class Status(Message):
    type: ClassVar[str] = "status"
    state: AgentState


@dataclass(frozen=True, slots=True)
class TaskEvent(Message):
    kind: EventKind
    task_id: int
    attempt: int
    progress: dict[str, Any] | None = None  # task.progress
    result: Any = None  # task.succeeded: any JSON value
    error: dict[str, str] | None = None  # task.failed: {"code", "message"}
    retryable: bool = True  # task.failed
    reason: str = ""  # task.accepted, task.rejected

    @property
    def type(self) -> str:
        return f"task.{self.kind}"


@dataclass(frozen=True, slots=True)
class TaskLog(Message):
    """A chunk of a task's output: ``seq`` counts from 1 without gaps per (task, attempt); ``data`` is raw bytes."""

    type: ClassVar[str] = "task.log"
    task_id: int
    attempt: int
    seq: int
    stream: LogStream
    data: bytes  # decoded: the UTF-8 of the text, or the bytes the base64 carried


AgentMessage: TypeAlias = Hello | Heartbeat | Status | TaskEvent | TaskLog


def parse_agent_message(topic: str, payload: bytes) -> AgentMessage:
    """Validate one message an agent published; raise ``ProtocolError`` for anything else."""
    where = parse_topic(topic)
    if where.agent_id is None or where.channel not in AGENT_CHANNELS:
        raise ProtocolError("bad_topic", f"agents do not publish on {topic!r}")
    data = _decode(payload)
    version = data.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"expected v={PROTOCOL_VERSION}, got {_show(version)}", "v")
    message_id = _text(data, "id", 1, MAX_MESSAGE_ID_CHARS)
    if not message_id.isprintable() or message_id.isspace():
        raise ProtocolError("bad_field", "id must be printable", "id")
    sent_at = _timestamp(data, "ts")
    message_type = _text(data, "type", 1, 64)
    if "agent_id" in data and data["agent_id"] != where.agent_id:
        raise ProtocolError("agent_mismatch", f"message from {where.agent_id!r} names another agent", "agent_id")
    channel = _CHANNEL_OF_TYPE.get(message_type)
    if channel is None:
        raise ProtocolError("unknown_type", f"unknown message type {message_type[:64]!r}", "type")
    if channel != where.channel:
        raise ProtocolError("wrong_topic", f"{message_type} belongs on .../{channel}, not .../{where.channel}")
    head = (where.agent_id, message_id, sent_at)
    if message_type == "hello":
        return Hello(
            *head,
            agent_version=_text(data, "agent_version", 1, MAX_VERSION_CHARS),
            capabilities=tuple(
                _check_text(item, f"capabilities[{i}]", 1, MAX_CAPABILITY_CHARS)
                for i, item in enumerate(_list(data, "capabilities", MAX_CAPABILITIES))
            ),
            labels=_labels(data),
            max_concurrency=_int(data, "max_concurrency", 0, MAX_CONCURRENCY),
            running=_running(data),
            finished=_running(data, "finished") if "finished" in data else (),
        )
    if message_type == "heartbeat":
        return Heartbeat(*head, seq=_int(data, "seq", 0, MAX_SEQ), running=_running(data), load=_load(data))
    if message_type == "status":
        state = _text(data, "state", 1, 16)
        if state not in ("online", "offline"):
            raise ProtocolError("bad_field", "state must be 'online' or 'offline'", "state")
        return Status(*head, state=cast(AgentState, state))
    if message_type == "task.log":
        return _task_log(data, head)
    return _task_event(data, head, cast(EventKind, message_type.removeprefix("task.")))


_CHANNEL_OF_TYPE: Final = {"hello": HELLO, "heartbeat": HEARTBEAT, "status": STATUS, "task.log": LOGS} | {
    f"task.{kind}": EVENTS for kind in EVENT_KINDS
}


def _task_log(data: dict[str, Any], head: tuple[str, str, datetime]) -> TaskLog:
    task_id = _int(data, "task_id", 1, MAX_TASK_ID)
    attempt = _int(data, "attempt", 0, MAX_ATTEMPT)
    seq = _int(data, "seq", 1, MAX_SEQ)
    stream = _text(data, "stream", 1, 16)
    if stream not in LOG_STREAMS:
        raise ProtocolError("bad_field", "stream must be 'stdout', 'stderr' or 'system'", "stream")
    encoding = data.get("encoding", "utf-8")
    if not isinstance(encoding, str) or encoding not in LOG_ENCODINGS:
        raise ProtocolError("bad_field", "encoding must be 'utf-8' or 'base64'", "encoding")
    text = _field(data, "data")
    if not isinstance(text, str):
        raise ProtocolError("bad_field", f"data must be a string, got {_show(text)}", "data")
    if encoding == "base64":
        if len(text) > 4 * ((MAX_LOG_CHUNK_BYTES + 2) // 3):
            raise ProtocolError("too_long", f"data decodes to more than {MAX_LOG_CHUNK_BYTES} bytes", "data")
        try:
            chunk = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("bad_field", "data is not valid base64", "data") from None
    else:
        if len(text) > MAX_LOG_CHUNK_BYTES:  # a character is at least one byte: refuse before encoding
            raise ProtocolError("too_long", f"data is more than {MAX_LOG_CHUNK_BYTES} bytes", "data")
        chunk = text.encode()  # the decoder already refused lone surrogates
    if len(chunk) > MAX_LOG_CHUNK_BYTES:
        raise ProtocolError("too_long", f"data is {len(chunk)} bytes, the limit is {MAX_LOG_CHUNK_BYTES}", "data")
    stream = cast(LogStream, stream)
    return TaskLog(*head, task_id=task_id, attempt=attempt, seq=seq, stream=stream, data=chunk)


def _task_event(data: dict[str, Any], head: tuple[str, str, datetime], kind: EventKind) -> TaskEvent:
    task_id = _int(data, "task_id", 1, MAX_TASK_ID)
    attempt = _int(data, "attempt", 0, MAX_ATTEMPT)
    if kind == "progress":
        progress = _field(data, "progress")
        if not isinstance(progress, dict):
            raise ProtocolError("bad_field", "progress must be an object", "progress")
        return TaskEvent(*head, kind=kind, task_id=task_id, attempt=attempt, progress=progress)
    if kind == "succeeded":
        return TaskEvent(*head, kind=kind, task_id=task_id, attempt=attempt, result=_field(data, "result"))
    if kind == "failed":
        error = _field(data, "error")
        if not isinstance(error, dict):
            raise ProtocolError("bad_field", "error must be an object", "error")
        code = _text(error, "code", 1, MAX_ERROR_CODE_CHARS, path="error.code")
        message = _text(error, "message", 0, MAX_ERROR_MESSAGE_CHARS, path="error.message")
        retryable = data.get("retryable", True)
        if not isinstance(retryable, bool):
            raise ProtocolError("bad_field", "retryable must be a boolean", "retryable")
        error = {"code": code, "message": message}
        return TaskEvent(*head, kind=kind, task_id=task_id, attempt=attempt, error=error, retryable=retryable)
    reason = _text(data, "reason", 0, MAX_REASON_CHARS) if "reason" in data else ""
    return TaskEvent(*head, kind=kind, task_id=task_id, attempt=attempt, reason=reason)


def report_fields(event: TaskEvent) -> dict[str, Any]:
    """Keyword arguments for ``tasks.engine.reports.Report``; the message id is what stores the event once."""
    return {name: getattr(event, name) for name in _REPORT_FIELDS}


_REPORT_FIELDS = ("kind", "task_id", "attempt", "message_id", "progress", "result", "error", "retryable", "reason")


# --- decoding and field readers -----------------------------------------------------------

_MISSING: Final = object()
_RFC3339: Final = re.compile(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def _decode(payload: bytes) -> dict[str, Any]:
    data = decode_json(payload)
    if not isinstance(data, dict):
        raise ProtocolError("not_object", f"the message is a JSON {type(data).__name__}, not an object")
    return data


def decode_json(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Any JSON document under the protocol's rules (size, strict JSON, depth, no NUL or lone surrogates).

    The rules are ``aegis_site.core.strict_json``'s, which the HTTP API's parser uses too, so both
    transports refuse the same input; here a refusal is a ``ProtocolError`` with the same code.
    """
    try:
        return strict_json.decode_json(payload, max_bytes)
    except strict_json.JsonRefused as refused:
        raise ProtocolError(refused.code, refused.message) from None


def _field(data: dict[str, Any], key: str, path: str | None = None) -> Any:
    value = data.get(key, _MISSING)
    if value is _MISSING:
        raise ProtocolError("missing_field", f"{path or key} is required", path or key)
    return value


def _int(data: dict[str, Any], key: str, low: int, high: int, path: str | None = None) -> int:
    path = path or key
    value = _field(data, key, path)
    if type(value) is not int:  # bool is an int subclass: true must not pass for 1
        raise ProtocolError("bad_field", f"{path} must be an integer, got {_show(value)}", path)
    if not low <= value <= high:
        raise ProtocolError("bad_field", f"{path} must be in {low}..{high}", path)
    return value


def _text(data: dict[str, Any], key: str, low: int, high: int, path: str | None = None) -> str:
    return _check_text(_field(data, key, path), path or key, low, high)


def _check_text(value: Any, path: str, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"{path} must be a string, got {_show(value)}", path)
    if not low <= len(value) <= high:
        raise ProtocolError("bad_field", f"{path} must have {low}..{high} characters", path)
    return value


def _list(data: dict[str, Any], key: str, max_items: int) -> list[Any]:
    value = _field(data, key)
    if not isinstance(value, list):
        raise ProtocolError("bad_field", f"{key} must be a list, got {_show(value)}", key)
    if len(value) > max_items:
        raise ProtocolError("bad_field", f"{key} has {len(value)} items, the limit is {max_items}", key)
    return value


def _timestamp(data: dict[str, Any], key: str) -> datetime:
    text = _text(data, key, 1, 64)
    if not _RFC3339.match(text):
        raise ProtocolError("bad_field", f"{key} is not an RFC 3339 timestamp with an offset", key)
    text = text.upper().replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:  # e.g. month 13, second 60
        raise ProtocolError("bad_field", f"{key}: {exc}", key) from None


def _running(data: dict[str, Any], key: str = "running") -> tuple[RunningTask, ...]:
    running = []
    for i, item in enumerate(_list(data, key, MAX_RUNNING)):
        path = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError("bad_field", f"{path} must be an object", path)
        task_id = _int(item, "task_id", 1, MAX_TASK_ID, path=f"{path}.task_id")
        running.append(RunningTask(task_id, _int(item, "attempt", 0, MAX_ATTEMPT, path=f"{path}.attempt")))
    return tuple(running)


def _labels(data: dict[str, Any]) -> dict[str, str]:
    labels = _field(data, "labels")
    if not isinstance(labels, dict):
        raise ProtocolError("bad_field", f"labels must be an object, got {_show(labels)}", "labels")
    if len(labels) > MAX_LABELS:
        raise ProtocolError("bad_field", f"{len(labels)} labels, the limit is {MAX_LABELS}", "labels")
    for key, value in labels.items():
        _check_text(key, "labels (key)", 1, MAX_LABEL_KEY_CHARS)
        _check_text(value, f"labels.{key}", 0, MAX_LABEL_VALUE_CHARS)
    return labels


def _load(data: dict[str, Any]) -> float | None:
    load = data.get("load")
    if load is None:
        return None
    if type(load) not in (int, float) or not 0 <= load <= MAX_LOAD:
        raise ProtocolError("bad_field", f"load must be a number in 0..{MAX_LOAD:g}", "load")
    return float(load)


def _show(value: Any) -> str:
    if isinstance(value, int):  # bool included: "True" says more than "bool"
        return repr(value)[:40]
    return "null" if value is None else type(value).__name__


# --- server → agent messages --------------------------------------------------------------


def envelope(message_type: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """The envelope ``broker.outbox`` writes: a fresh id, ``at`` as the send time."""
    if at.utcoffset() is None:
        raise ValueError("the send time must be timezone-aware")
    return {"v": PROTOCOL_VERSION, "id": uuid.uuid4().hex, "ts": at.isoformat(), "type": message_type, **fields}


def task_assign(
    at: datetime,
    *,
    task_id: int,
    attempt: int,
    job_id: int,
    kind: str,
    payload: Any,
    timeout_s: int,
    lease_s: int,
) -> dict[str, Any]:
    task = {
        "id": task_id,
        "attempt": attempt,
        "job_id": job_id,
        "kind": kind,
        "payload": payload,
        "timeout_s": timeout_s,
        "lease_s": lease_s,
    }
    return envelope("task.assign", at, task=task)


def task_cancel(at: datetime, *, task_id: int, attempt: int, force: bool) -> dict[str, Any]:
    return envelope("task.cancel", at, task_id=task_id, attempt=attempt, force=force)


def agent_drain(at: datetime) -> dict[str, Any]:
    return envelope("agent.drain", at)


def agent_resume(at: datetime) -> dict[str, Any]:
    """The operator made a drained (or disabled) agent active again: it takes new work."""
    return envelope("agent.resume", at)


def ping(at: datetime, *, hello: bool = False) -> dict[str, Any]:
    """``hello=True`` asks the agent for its hello (the server does not know it yet); else a heartbeat."""
    return envelope("ping", at, hello=True) if hello else envelope("ping", at)


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON for the wire; refuses NaN/Infinity and anything over the size limit."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message is {len(data)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    return data
