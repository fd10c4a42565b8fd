"""Wire protocol version 1: what agents may publish, and what the server publishes to them.

The parser is the bridge's only defence against a broken or hostile agent, so the
malformed cases are spelled out one by one, and hypothesis checks that no input at
all makes it raise anything but ``ProtocolError``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import protocol
from broker.protocol import (
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    Heartbeat,
    Hello,
    ProtocolError,
    RunningTask,
    Status,
    TaskEvent,
    TaskLog,
    parse_agent_message,
)

REPO = Path(__file__).resolve().parents[2]
AGENT = "edge-01"
TS = "2024-05-01T12:00:00Z"
SENT_AT = datetime(2024, 5, 1, 12, tzinfo=UTC)
NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def message(message_type: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": uuid.uuid4().hex, "ts": TS, "type": message_type, **fields}


# One valid example of every agent → server message, with the channel it belongs on.
VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "hello": (
        "hello",
        message(
            "hello",
            agent_version="1.4.2",
            capabilities=["echo", "shell"],
            labels={"region": "eu-west", "rack": "r12"},
            max_concurrency=4,
            running=[{"task_id": 812, "attempt": 2}],
        ),
    ),
    "heartbeat": ("heartbeat", message("heartbeat", seq=42, running=[{"task_id": 812, "attempt": 2}], load=0.75)),
    "status": ("status", message("status", state="online")),
    "task.accepted": ("events", message("task.accepted", task_id=812, attempt=2)),
    "task.rejected": ("events", message("task.rejected", task_id=812, attempt=2, reason="no handler for kind")),
    "task.progress": ("events", message("task.progress", task_id=812, attempt=2, progress={"percent": 40})),
    "task.succeeded": ("events", message("task.succeeded", task_id=812, attempt=2, result={"exit_code": 0})),
    "task.failed": (
        "events",
        message("task.failed", task_id=812, attempt=2, error={"code": "timeout", "message": "ran 600 s"}),
    ),
    "task.log": ("logs", message("task.log", task_id=812, attempt=2, seq=1, stream="stdout", data="hello\n")),
}

REQUIRED = {
    "hello": ("agent_version", "capabilities", "labels", "max_concurrency", "running"),
    "heartbeat": ("seq", "running"),
    "status": ("state",),
    "task.accepted": ("task_id", "attempt"),
    "task.rejected": ("task_id", "attempt"),
    "task.progress": ("task_id", "attempt", "progress"),
    "task.succeeded": ("task_id", "attempt", "result"),
    "task.failed": ("task_id", "attempt", "error"),
    "task.log": ("task_id", "attempt", "seq", "stream", "data"),
}


def topic(channel: str, agent: str = AGENT) -> str:
    return f"aegis/agents/{agent}/{channel}"


def parse(channel: str, document: Any, agent: str = AGENT) -> protocol.AgentMessage:
    return parse_agent_message(topic(channel, agent), json.dumps(document).encode())


def refused(channel: str, document: Any, agent: str = AGENT) -> ProtocolError:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(ProtocolError) as info:
        parse_agent_message(topic(channel, agent), payload)
    assert info.value.code in protocol.ERROR_CODES
    return info.value


def valid(message_type: str, **changes: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(VALID[message_type][1]))
    document.update(changes)
    return document


# --- valid messages -----------------------------------------------------------------------


def test_hello_parses_into_a_frozen_message_carrying_the_topic_agent():
    document = valid("hello")
    hello = parse("hello", document)
    assert hello == Hello(
        agent_id=AGENT,
        message_id=document["id"],
        sent_at=SENT_AT,
        agent_version="1.4.2",
        capabilities=("echo", "shell"),
        labels={"region": "eu-west", "rack": "r12"},
        max_concurrency=4,
        running=(RunningTask(task_id=812, attempt=2),),
    )
    assert hello.type == "hello"
    with pytest.raises(AttributeError):
        hello.agent_id = "other"  # type: ignore[misc]


def test_hello_from_an_idle_agent_with_nothing_declared_parses():
    hello = parse("hello", valid("hello", capabilities=[], labels={}, running=[], max_concurrency=0))
    assert (hello.capabilities, hello.labels, hello.running) == ((), {}, ())


def test_heartbeat_parses_and_load_is_optional():
    document = valid("heartbeat")
    assert parse("heartbeat", document) == Heartbeat(
        AGENT, document["id"], SENT_AT, seq=42, running=(RunningTask(812, 2),), load=0.75
    )
    del document["load"]
    assert parse("heartbeat", document).load is None
    assert parse("heartbeat", valid("heartbeat", load=None)).load is None
    assert parse("heartbeat", valid("heartbeat", load=3)).load == 3.0


@pytest.mark.parametrize("state", ["online", "offline"])
def test_status_parses(state):
    document = valid("status", state=state)
    assert parse("status", document) == Status(AGENT, document["id"], SENT_AT, state=state)


@pytest.mark.parametrize(
    ("message_type", "expected"),
    [
        ("task.accepted", {}),
        ("task.rejected", {"reason": "no handler for kind"}),
        ("task.progress", {"progress": {"percent": 40}}),
        ("task.succeeded", {"result": {"exit_code": 0}}),
        ("task.failed", {"error": {"code": "timeout", "message": "ran 600 s"}, "retryable": True}),
    ],
)
def test_task_events_parse(message_type, expected):
    document = valid(message_type)
    event = parse("events", document)
    kind = message_type.removeprefix("task.")
    assert event == TaskEvent(AGENT, document["id"], SENT_AT, kind=kind, task_id=812, attempt=2, **expected)
    assert event.type == message_type


@pytest.mark.parametrize("result", [None, 0, "done", [1, 2], {"nested": {"deep": [True]}}])
def test_a_success_may_carry_any_json_result(result):
    assert parse("events", valid("task.succeeded", result=result)).result == result


def test_a_failure_may_say_it_should_not_be_retried_and_keeps_only_code_and_message():
    error = {"code": "bad_input", "message": "", "trace": "ignored"}
    event = parse("events", valid("task.failed", error=error, retryable=False))
    assert event.retryable is False
    assert event.error == {"code": "bad_input", "message": ""}


def test_accepted_may_carry_a_reason_and_rejected_may_omit_it():
    assert parse("events", valid("task.accepted", reason="warm cache")).reason == "warm cache"
    document = valid("task.rejected")
    del document["reason"]
    assert parse("events", document).reason == ""


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-05-01T12:00:00Z", SENT_AT),
        ("2024-05-01t12:00:00z", SENT_AT),
        ("2024-05-01 12:00:00Z", SENT_AT),
        ("2024-05-01T14:00:00+02:00", SENT_AT),
        ("2024-05-01T12:00:00.123456789Z", SENT_AT + timedelta(microseconds=123456)),
        ("2024-05-01T11:30:00.5-00:30", SENT_AT + timedelta(microseconds=500000)),
    ],
)
def test_rfc3339_timestamps_parse_to_aware_datetimes(ts, expected):
    sent_at = parse("status", valid("status", ts=ts)).sent_at
    assert sent_at == expected
    assert sent_at.utcoffset() is not None


def test_unknown_fields_are_ignored_so_peers_can_add_optional_ones():
    assert parse("status", valid("status", trace_id="abc", extra={"x": [1]})).state == "online"


def test_an_agent_id_field_that_names_the_sender_is_accepted():
    assert parse("status", valid("status", agent_id=AGENT)).agent_id == AGENT


def test_a_message_of_exactly_the_size_limit_parses():
    document = valid("status", pad="")
    document["pad"] = "x" * (MAX_MESSAGE_BYTES - len(json.dumps(document).encode()))
    payload = json.dumps(document).encode()
    assert len(payload) == MAX_MESSAGE_BYTES
    assert parse_agent_message(topic("status"), payload).state == "online"


def test_nesting_up_to_the_depth_limit_parses():
    result: Any = []
    for _ in range(MAX_DEPTH - 2):  # the envelope is one level, the result list another
        result = [result]
    assert parse("events", valid("task.succeeded", result=result)).result == result
    assert refused("events", valid("task.succeeded", result=[result])).code == "too_deep"


def test_agent_ids_at_the_edges_of_the_pattern_parse():
    for agent in ("a", "0", "a" * 63, "edge_01.eu-west"):
        assert parse("status", valid("status"), agent=agent).agent_id == agent


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty"),
        (b"not json", "not_json"),
        (b'{"v": 1,', "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"v": "\xc3\x28"}', "not_utf8"),
        ('{"v": 1}'.encode("utf-16"), "not_utf8"),
        (b"\xef\xbb\xbf{}", "not_json"),  # a UTF-8 byte order mark is not JSON
        (b"[1, 2]", "not_object"),
        (b'"hello"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b'{"v": NaN}', "not_json"),
        (b'{"v": Infinity}', "not_json"),
        (b'{"v": 1e999}', "not_json"),
        (b'{"v": 1, "v": 1}', "not_json"),
        (b'{"v": 1' + b"0" * 5000 + b"}", "not_json"),  # beyond Python's integer digit limit
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep"),
        (b'{"v": 1, "id": "a\\u0000b"}', "bad_string"),
        (b'{"v": 1, "x\\u0000": 1}', "bad_string"),
        (b'{"v": 1, "id": "\\ud800"}', "bad_string"),
        # Brackets in text (log lines) take the depth walk; an escaped NUL beside them is still found.
        (b'{"v": 1, "log": "' + b"worker[1] " * 40 + b'", "id": "a\\u0000b"}', "bad_string"),
        (b'{"v": 1, "log": "' + b"worker[1] " * 40 + b'\\ud800"}', "bad_string"),
    ],
)
def test_payloads_that_are_not_a_json_object_are_refused(payload, code):
    assert refused("status", payload).code == code


def test_oversized_payloads_are_refused_before_they_are_decoded():
    document = valid("status", pad="x" * MAX_MESSAGE_BYTES)
    assert refused("status", document).code == "oversized"
    assert refused("status", b"\xff" * (MAX_MESSAGE_BYTES + 1)).code == "oversized"


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.0, True, [1]])
def test_a_missing_or_other_version_is_refused(version):
    document = valid("status", v=version)
    if version is None:
        del document["v"]
    error = refused("status", document)
    assert (error.code, error.field) == ("bad_version", "v")


@pytest.mark.parametrize("message_type", VALID)
@pytest.mark.parametrize("field", ["id", "ts", "type"])
def test_every_message_needs_an_id_a_timestamp_and_a_type(message_type, field):
    channel, document = VALID[message_type]
    document = dict(document)
    del document[field]
    error = refused(channel, document)
    assert (error.code, error.field) == ("missing_field", field)


@pytest.mark.parametrize(("message_type", "field"), [(t, f) for t, fields in REQUIRED.items() for f in fields])
def test_every_required_field_is_required(message_type, field):
    channel = VALID[message_type][0]
    document = valid(message_type)
    del document[field]
    error = refused(channel, document)
    assert (error.code, error.field) == ("missing_field", field)


@pytest.mark.parametrize("message_id", ["", " ", "x" * 101, 7, None, "line\nbreak"])
def test_a_bad_message_id_is_refused(message_id):
    error = refused("status", valid("status", id=message_id))
    assert (error.code, error.field) == ("bad_field", "id")


@pytest.mark.parametrize(
    "ts",
    [
        "yesterday",
        "",
        "2024-05-01T12:00:00",  # no offset: ambiguous
        "2024-05-01",
        "20240501T120000Z",
        "2024-13-01T12:00:00Z",
        "2024-05-01T12:00:60Z",
        "2024-05-01T12:00:00+25:00",
        "2024-05-01T12:00:00.Z",
        "٢٠٢٤-05-01T12:00:00Z",  # non-ASCII digits
        1714564800,
        None,
    ],
)
def test_a_bad_timestamp_is_refused(ts):
    error = refused("status", valid("status", ts=ts))
    assert (error.code, error.field) == ("bad_field", "ts")


@pytest.mark.parametrize("message_type", ["task.assign", "ping", "task.done", "Hello", "task."])
def test_an_unknown_type_is_refused(message_type):
    error = refused("events", valid("task.accepted", type=message_type))
    assert (error.code, error.field) == ("unknown_type", "type")


@pytest.mark.parametrize("message_type", [1, None, "", "x" * 65])
def test_a_type_that_is_not_a_short_string_is_refused(message_type):
    error = refused("events", valid("task.accepted", type=message_type))
    assert (error.code, error.field) == ("bad_field", "type")


@pytest.mark.parametrize(
    ("channel", "message_type"),
    [
        ("heartbeat", "hello"),
        ("status", "task.succeeded"),
        ("events", "heartbeat"),
        ("hello", "status"),
        ("events", "task.log"),
        ("logs", "task.succeeded"),
        ("logs", "heartbeat"),
    ],
)
def test_a_message_on_the_topic_of_another_kind_is_refused(channel, message_type):
    assert refused(channel, valid(message_type)).code == "wrong_topic"


@pytest.mark.parametrize(
    "bad_topic",
    [
        "aegis/agents/edge-01/inbox",  # server → agent only
        "aegis/broadcast",
        "aegis/agents/Edge-01/status",
        "aegis/agents/-edge/status",
        "aegis/agents/.edge/status",
        "aegis/agents/" + "a" * 64 + "/status",
        "aegis/agents//status",
        "aegis/agents/+/status",
        "aegis/agents/edge 01/status",
        "aegis/agents/edge-01/status/extra",
        "aegis/agents/edge-01/output",
        "aegis/agents/edge-01\n/status",
        "other/agents/edge-01/status",
        "",
    ],
)
def test_topics_agents_may_not_publish_on_are_refused(bad_topic):
    with pytest.raises(ProtocolError) as info:
        parse_agent_message(bad_topic, json.dumps(valid("status")).encode())
    assert info.value.code == "bad_topic"


@pytest.mark.parametrize("claimed", ["edge-02", "", None, 1])
def test_an_agent_id_field_naming_another_agent_is_refused(claimed):
    error = refused("status", valid("status", agent_id=claimed))
    assert (error.code, error.field) == ("agent_mismatch", "agent_id")


BAD_FIELDS = [
    # (message type, changes, field reported)
    ("task.accepted", {"task_id": "812"}, "task_id"),
    ("task.accepted", {"task_id": 0}, "task_id"),
    ("task.accepted", {"task_id": 2**63}, "task_id"),
    ("task.accepted", {"task_id": 812.0}, "task_id"),
    ("task.accepted", {"task_id": True}, "task_id"),
    ("task.accepted", {"attempt": -1}, "attempt"),
    ("task.accepted", {"attempt": 32_768}, "attempt"),
    ("task.accepted", {"attempt": "2"}, "attempt"),
    ("task.accepted", {"attempt": True}, "attempt"),
    ("task.accepted", {"attempt": None}, "attempt"),
    ("task.accepted", {"reason": 5}, "reason"),
    ("task.rejected", {"reason": "x" * 1001}, "reason"),
    ("task.progress", {"progress": [40]}, "progress"),
    ("task.progress", {"progress": None}, "progress"),
    ("task.failed", {"error": "timeout"}, "error"),
    ("task.failed", {"error": {"code": "", "message": "m"}}, "error.code"),
    ("task.failed", {"error": {"code": "c", "message": ["m"]}}, "error.message"),
    ("task.failed", {"retryable": "yes"}, "retryable"),
    ("task.failed", {"retryable": 1}, "retryable"),
    ("hello", {"agent_version": ""}, "agent_version"),
    ("hello", {"agent_version": 2}, "agent_version"),
    ("hello", {"capabilities": "echo"}, "capabilities"),
    ("hello", {"capabilities": ["echo", 1]}, "capabilities[1]"),
    ("hello", {"capabilities": [""]}, "capabilities[0]"),
    ("hello", {"capabilities": ["e"] * 257}, "capabilities"),
    ("hello", {"labels": [["region", "eu"]]}, "labels"),
    ("hello", {"labels": {"region": 1}}, "labels.region"),
    ("hello", {"labels": {"region": "x" * 256}}, "labels.region"),
    ("hello", {"labels": {"": "x"}}, "labels (key)"),
    ("hello", {"labels": {"k" * 64: "x"}}, "labels (key)"),
    ("hello", {"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
    ("hello", {"max_concurrency": -1}, "max_concurrency"),
    ("hello", {"max_concurrency": 10_001}, "max_concurrency"),
    ("hello", {"max_concurrency": True}, "max_concurrency"),
    ("hello", {"running": {"task_id": 1, "attempt": 1}}, "running"),
    ("hello", {"running": [[812, 2]]}, "running[0]"),
    ("hello", {"running": [{"task_id": 812, "attempt": 1}, {"task_id": -5, "attempt": 1}]}, "running[1].task_id"),
    ("heartbeat", {"running": [{"task_id": i + 1, "attempt": 1} for i in range(1001)]}, "running"),
    ("heartbeat", {"seq": -1}, "seq"),
    ("heartbeat", {"seq": False}, "seq"),
    ("heartbeat", {"seq": "42"}, "seq"),
    ("heartbeat", {"load": -0.1}, "load"),
    ("heartbeat", {"load": True}, "load"),
    ("heartbeat", {"load": "0.5"}, "load"),
    ("heartbeat", {"load": 1e7}, "load"),
    ("status", {"state": "busy"}, "state"),
    ("status", {"state": "ONLINE"}, "state"),
    ("status", {"state": True}, "state"),
    ("task.log", {"task_id": 0}, "task_id"),
    ("task.log", {"attempt": 32_768}, "attempt"),
    ("task.log", {"seq": 0}, "seq"),
    ("task.log", {"seq": 2**63}, "seq"),
    ("task.log", {"seq": True}, "seq"),
    ("task.log", {"seq": "1"}, "seq"),
    ("task.log", {"stream": "stdin"}, "stream"),
    ("task.log", {"stream": 1}, "stream"),
    ("task.log", {"data": None}, "data"),
    ("task.log", {"data": ["x"]}, "data"),
    ("task.log", {"encoding": "latin-1"}, "encoding"),
    ("task.log", {"encoding": ["base64"]}, "encoding"),
    ("task.log", {"encoding": None}, "encoding"),
    ("task.log", {"encoding": "base64", "data": "not base64!"}, "data"),
    ("task.log", {"encoding": "base64", "data": "QQ"}, "data"),  # padding is required
]


@pytest.mark.parametrize(("message_type", "changes", "field"), BAD_FIELDS)
def test_fields_of_the_wrong_type_or_out_of_bounds_are_refused(message_type, changes, field):
    error = refused(VALID[message_type][0], valid(message_type, **changes))
    assert (error.code, error.field) == ("bad_field", field)


@pytest.mark.parametrize(
    ("message_type", "changes", "field"),
    [
        ("task.failed", {"error": {"message": "m"}}, "error.code"),
        ("task.failed", {"error": {"code": "c"}}, "error.message"),
        ("hello", {"running": [{"task_id": 812}]}, "running[0].attempt"),
        ("heartbeat", {"running": [{"attempt": 1}]}, "running[0].task_id"),
    ],
)
def test_nested_required_fields_are_required(message_type, changes, field):
    error = refused(VALID[message_type][0], valid(message_type, **changes))
    assert (error.code, error.field) == ("missing_field", field)


def test_a_protocol_error_says_what_is_wrong_in_words():
    error = refused("events", valid("task.accepted", attempt=-1))
    assert error.message == "attempt must be in 0..32767"
    assert str(error) == "bad_field: attempt must be in 0..32767"


# --- task output ------------------------------------------------------------------------


def test_a_log_chunk_parses_into_its_bytes_and_the_encoding_defaults_to_utf8():
    chunk = parse("logs", valid("task.log", data="żółw\n", stream="stderr", seq=7))
    assert chunk == TaskLog(
        AGENT, chunk.message_id, SENT_AT, task_id=812, attempt=2, seq=7, stream="stderr", data="żółw\n".encode()
    )
    assert chunk.type == "task.log"
    assert parse("logs", valid("task.log", data="")).data == b""


def test_base64_carries_any_bytes_exactly():
    raw = bytes(range(256)) * 64  # exactly the limit, every byte value, NUL and invalid UTF-8 included
    assert len(raw) == protocol.MAX_LOG_CHUNK_BYTES
    document = valid("task.log", data=base64.b64encode(raw).decode(), encoding="base64", stream="system")
    assert parse("logs", document).data == raw


@pytest.mark.parametrize(
    "changes",
    [
        {"data": "x" * (16 * 1024 + 1)},
        {"data": "é" * (8 * 1024) + "x"},  # 8,193 characters, 16,385 bytes
        {"data": base64.b64encode(b"x" * (16 * 1024 + 1)).decode(), "encoding": "base64"},
        {"data": "A" * 100_000, "encoding": "base64"},
    ],
)
def test_a_chunk_over_16_kib_is_refused_as_too_long(changes):
    error = refused("logs", valid("task.log", **changes))
    assert (error.code, error.field) == ("too_long", "data")


def test_a_chunk_of_exactly_16_kib_of_text_parses():
    assert len(parse("logs", valid("task.log", data="é" * (8 * 1024))).data) == 16 * 1024


# --- events become reports ----------------------------------------------------------------


@pytest.mark.parametrize("message_type", [t for t in VALID if t.startswith("task.") and t != "task.log"])
def test_every_event_becomes_the_report_the_engine_applies(message_type):
    from tasks.engine.reports import REPORT_KINDS, Report

    event = parse("events", valid(message_type))
    assert isinstance(event, TaskEvent)
    fields = protocol.report_fields(event)
    report = Report(**fields)
    assert report.kind == message_type.removeprefix("task.")
    assert report.kind in REPORT_KINDS
    assert (report.task_id, report.attempt, report.message_id) == (812, 2, event.message_id)
    assert report.progress == event.progress
    assert report.result == event.result
    assert report.error == event.error
    assert report.retryable is event.retryable
    assert report.reason == event.reason


def test_event_kinds_are_the_report_kinds_of_the_engine():
    from tasks.engine.reports import REPORT_KINDS

    assert protocol.EVENT_KINDS == REPORT_KINDS


# --- server → agent messages --------------------------------------------------------------


def without_id(document: dict[str, Any]) -> dict[str, Any]:
    assert re.fullmatch(r"[0-9a-f]{32}", document["id"])
    return {key: value for key, value in document.items() if key != "id"}


def test_builders_produce_what_the_outbox_writes_today():
    from broker import outbox
    from tasks.engine.claim import Assignment

    assignment = Assignment(
        task_id=812, attempt=2, job_id=17, kind="shell", payload={"cmd": ["true"]}, timeout_s=600, lease_s=90
    )
    pairs = [
        (
            protocol.task_assign(
                NOW,
                task_id=812,
                attempt=2,
                job_id=17,
                kind="shell",
                payload={"cmd": ["true"]},
                timeout_s=600,
                lease_s=90,
            ),
            outbox.to_inbox(AGENT, "task.assign", NOW, task=assignment.as_message()),
        ),
        (
            protocol.task_cancel(NOW, task_id=812, attempt=2, force=True),
            outbox.to_inbox(AGENT, "task.cancel", NOW, task_id=812, attempt=2, force=True),
        ),
        (protocol.agent_drain(NOW), outbox.to_inbox(AGENT, "agent.drain", NOW)),
        (protocol.agent_resume(NOW), outbox.to_inbox(AGENT, "agent.resume", NOW)),
        (protocol.ping(NOW), outbox.to_inbox(AGENT, "ping", NOW)),
    ]
    for built, queued in pairs:
        assert without_id(built) == without_id(queued.payload)
        assert list(built) == list(queued.payload)  # same keys, same order
        assert queued.topic == protocol.inbox_topic(AGENT)
    assert protocol.envelope("ping", NOW)["id"] != protocol.envelope("ping", NOW)["id"]


def test_server_messages_carry_the_version_and_an_rfc3339_time():
    built = protocol.task_cancel(
        datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))), task_id=1, attempt=1, force=False
    )
    assert built["v"] == protocol.PROTOCOL_VERSION
    assert datetime.fromisoformat(built["ts"]) == SENT_AT
    with pytest.raises(ValueError, match="timezone-aware"):
        protocol.ping(datetime(2024, 5, 1, 12))


def test_encode_writes_compact_utf8_json_within_the_limit():
    built = protocol.task_assign(
        NOW, task_id=1, attempt=1, job_id=1, kind="echo", payload={"text": "héllo"}, timeout_s=1, lease_s=1
    )
    data = protocol.encode(built)
    assert json.loads(data) == built
    assert b", " not in data
    assert "héllo".encode() in data
    with pytest.raises(ValueError, match="limit"):
        protocol.encode(protocol.envelope("ping", NOW, pad="x" * MAX_MESSAGE_BYTES))
    with pytest.raises(ValueError):
        protocol.encode(protocol.envelope("ping", NOW, value=float("nan")))


def test_encoded_agent_messages_round_trip_through_the_parser():
    for channel, document in VALID.values():
        assert parse_agent_message(topic(channel), protocol.encode(document)).message_id == document["id"]


# --- topics -------------------------------------------------------------------------------


def test_topics_are_built_and_parsed_alike():
    from broker import outbox

    assert protocol.inbox_topic(AGENT) == outbox.inbox_topic(AGENT) == "aegis/agents/edge-01/inbox"
    for channel in (*protocol.AGENT_CHANNELS, "inbox"):
        built = protocol.agent_topic(AGENT, channel)
        assert protocol.parse_topic(built) == protocol.Topic(AGENT, channel)
        assert protocol.topic_filter(channel) == f"aegis/agents/+/{channel}"
    assert protocol.parse_topic("aegis/broadcast") == protocol.Topic(None, "broadcast")


@pytest.mark.parametrize(("agent", "channel"), [("Edge", "status"), ("a/b", "status"), (AGENT, "output"), (AGENT, "")])
def test_building_a_topic_that_does_not_exist_is_a_programming_error(agent, channel):
    with pytest.raises(ValueError, match="no such topic"):
        protocol.agent_topic(agent, channel)


def test_the_agent_id_pattern_is_the_registry_one():
    from registry.models import AGENT_ID_PATTERN

    assert protocol.AGENT_ID_RE.pattern == AGENT_ID_PATTERN


# --- the module stays independent of Django ----------------------------------------------


def test_the_protocol_imports_with_the_standard_library_only_and_no_django_settings():
    # aegis_site: the ground floor's strict_json, itself the standard library only (no Django is loaded)
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import json, sys; before = set(sys.modules); import broker.protocol as p; "
        "loaded = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "ours = {'broker', 'aegis_site'}; "
        "print(json.dumps(sorted(loaded - set(sys.stdlib_module_names) - ours)), p.PROTOCOL_VERSION)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outside, version = done.stdout.rsplit(" ", 1)
    assert (json.loads(outside), version.strip()) == ([], "1")


# --- the documentation's examples are the protocol ----------------------------------------


def documented_examples() -> list[dict[str, Any]]:
    text = (REPO / "docs" / "protocol.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]


def test_every_documented_message_is_valid():
    examples = documented_examples()
    agent_types = {document["type"] for _, document in VALID.values()}
    documented = {example["type"] for example in examples}
    assert agent_types | {"task.assign", "task.cancel", "agent.drain", "agent.resume", "ping"} <= documented
    builders = {
        "task.assign": protocol.task_assign(
            NOW, task_id=1, attempt=1, job_id=1, kind="echo", payload=None, timeout_s=1, lease_s=1
        ),
        "task.cancel": protocol.task_cancel(NOW, task_id=1, attempt=1, force=False),
        "agent.drain": protocol.agent_drain(NOW),
        "agent.resume": protocol.agent_resume(NOW),
        "ping": protocol.ping(NOW),
    }
    for example in examples:
        if example["type"] in builders:
            assert list(example) == list(builders[example["type"]])
            if example["type"] == "task.assign":
                assert list(example["task"]) == list(builders["task.assign"]["task"])
        else:
            channel = VALID[example["type"]][0]
            assert parse(channel, example).message_id == example["id"]


# --- fuzzing ------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOPICS = st.one_of(
    st.sampled_from([topic(channel) for channel in protocol.AGENT_CHANNELS] + ["aegis/agents/x/inbox"]),
    st.text(max_size=80),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
ENVELOPES = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, True, "1"]),
        "id": st.text(max_size=110) | JSON,
        "ts": st.sampled_from([TS, "2024-05-01T12:00:00+02:00", "2024-02-30T00:00:00Z"]) | st.text(max_size=40),
        "type": st.sampled_from([document["type"] for _, document in VALID.values()]) | JSON,
    },
    optional={
        name: JSON | st.integers(min_value=-2, max_value=2**64)
        for name in {"agent_id", "retryable", "load", "reason", "result"}
        | {field for fields in REQUIRED.values() for field in fields}
    },
)


def parses_or_refuses(channel_topic: str, payload: bytes) -> None:
    outcome: Any
    try:
        outcome = parse_agent_message(channel_topic, payload)
    except ProtocolError as error:
        outcome = error
    if isinstance(outcome, ProtocolError):
        assert outcome.code in protocol.ERROR_CODES
    else:
        assert isinstance(outcome, Hello | Heartbeat | Status | TaskEvent | TaskLog)


@FUZZ
@given(TOPICS, st.binary(max_size=2048))
def test_arbitrary_bytes_either_parse_or_raise_protocol_error(channel_topic, payload):
    parses_or_refuses(channel_topic, payload)


@FUZZ
@given(TOPICS, JSON)
def test_arbitrary_json_values_either_parse_or_raise_protocol_error(channel_topic, document):
    parses_or_refuses(channel_topic, json.dumps(document).encode())


@FUZZ
@given(st.sampled_from(list(VALID.values())), ENVELOPES)
def test_arbitrary_envelopes_either_parse_or_raise_protocol_error(example, document):
    parses_or_refuses(topic(example[0]), json.dumps(document).encode())


@FUZZ
@given(st.sampled_from(list(VALID)), st.data())
def test_valid_messages_with_one_field_replaced_either_parse_or_raise_protocol_error(message_type, data):
    channel, document = VALID[message_type]
    document = dict(document)
    document[data.draw(st.sampled_from(sorted(document)))] = data.draw(JSON)
    parses_or_refuses(topic(channel), json.dumps(document).encode())
