"""Protocol parsing, message building and configuration loading (no broker needed)."""

from __future__ import annotations

import json

import pytest

from aegis_agent import wire
from aegis_agent.config import ConfigError, load
from aegis_agent.tests.conftest import assign, inbox_message


def test_parse_assign():
    parsed = wire.parse_inbox(assign(5, "echo", {"a": 1}, attempt=2))
    assert isinstance(parsed, wire.Assign)
    assert parsed.task.key == (5, 2)
    assert parsed.task.kind == "echo"
    assert parsed.task.payload == {"a": 1}
    assert parsed.task.timeout_s == 30.0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b'{"v": 1}',
        inbox_message("task.cancel", task_id=1, attempt=-1, force=False),
        inbox_message("task.cancel", task_id=True, attempt=1, force=False),
        inbox_message("task.cancel", task_id=1, attempt=1, force="yes"),
        inbox_message("task.assign", task={"id": 1, "attempt": 1, "kind": ""}),
        json.dumps({"v": 1, "id": "x", "ts": "yesterday", "type": "ping"}).encode(),
        b" " * (wire.MAX_MESSAGE_BYTES + 1),
    ],
)
def test_invalid_inbox_messages_raise_protocol_error(data):
    with pytest.raises(wire.ProtocolError):
        wire.parse_inbox(data)


def test_envelopes_have_version_id_and_utc_timestamp():
    message = wire.task_failed(3, 1, "boom", "it broke", retryable=True)
    assert message["v"] == 1
    assert message["type"] == "task.failed"
    assert message["ts"].endswith("Z")
    assert message["error"] == {"code": "boom", "message": "it broke"}
    assert wire.hello("1", ["echo"], {}, 2, [(3, 1)])["running"] == [{"task_id": 3, "attempt": 1}]


def test_oversized_outgoing_message_is_refused():
    with pytest.raises(wire.MessageTooLarge):
        wire.encode(wire.task_succeeded(1, 1, {"blob": "x" * wire.MAX_MESSAGE_BYTES}))


def test_config_from_toml_with_cli_overrides(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('agent_id = "a-1"\nhost = "broker"\nshell_allow = ["ls"]\n[labels]\nsite = "x"\n')
    config = load(path, {"host": "other", "port": None})
    assert (config.agent_id, config.host, config.broker_port) == ("a-1", "other", 1883)
    assert config.labels == {"site": "x"}
    assert config.shell_allow == ["ls"]


def test_config_from_json(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"agent_id": "a-2", "max_concurrency": 9}))
    assert load(path).max_concurrency == 9


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"agent_id": "a", "colour": "red"}, "unknown setting"),
        ({"agent_id": "a", "tls_ca": "/nope"}, "go together"),
        ({"agent_id": "a", "max_concurrency": 0}, "max_concurrency"),
        ({"host": "x"}, "agent_id is required"),
    ],
)
def test_bad_config_is_refused_with_a_reason(tmp_path, settings, message):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_a_ping_may_ask_for_the_hello_again():
    ping = wire.parse_inbox(json.dumps({"v": 1, "id": "p1", "ts": "2026-01-01T00:00:00Z", "type": "ping"}).encode())
    asking = wire.parse_inbox(
        json.dumps({"v": 1, "id": "p2", "ts": "2026-01-01T00:00:00Z", "type": "ping", "hello": True}).encode()
    )
    assert ping == wire.Ping("p1", hello=False)
    assert asking == wire.Ping("p2", hello=True)
