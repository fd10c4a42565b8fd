"""The agent writes the control plane's log lines (aegis_site/logs.py) without Django or structlog."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_agent import logs
from aegis_site import logs as site_logs

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def record(exc_info: bool = False) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "aegis_agent.simulate",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": "demo-%d said %s",
            "args": (1, "a\nforged line"),
            "agent_id": "demo-1",
            "count": 3,
        }
    )
    if exc_info:
        try:
            raise ValueError("broken\ninput")
        except ValueError:
            made.exc_info = sys.exc_info()
    return made


@pytest.mark.parametrize("exc_info", [False, True])
def test_the_plain_line_is_the_control_planes(exc_info):
    ours, theirs = logs.PlainFormatter().format(record(exc_info)), site_logs.plain_formatter().format(record(exc_info))
    (our_time, ours), (their_time, theirs) = ours.split(" ", 1), theirs.split(" ", 1)  # each its own clock
    assert ours == theirs
    assert TIMESTAMP.fullmatch(our_time), our_time
    assert TIMESTAMP.fullmatch(their_time), their_time
    assert ours.startswith("WARNING aegis_agent.simulate demo-1 said a\\nforged line ")
    assert ours.splitlines()[0].endswith(" agent_id=demo-1 count=3")
    assert all(line.startswith("    ") for line in ours.splitlines()[1:])


@pytest.mark.parametrize("exc_info", [False, True])
def test_the_json_line_is_the_control_planes(exc_info):
    ours = json.loads(logs.JsonFormatter().format(record(exc_info)))
    theirs = json.loads(site_logs.json_formatter().format(record(exc_info)))
    assert TIMESTAMP.fullmatch(ours.pop("timestamp"))
    assert TIMESTAMP.fullmatch(theirs.pop("timestamp"))
    assert ours == theirs
    assert ours["event"] == "demo-1 said a\nforged line"
    assert (ours["logger"], ours["level"], ours["agent_id"], ours["count"]) == (
        "aegis_agent.simulate",
        "warning",
        "demo-1",
        3,
    )


def test_log_format_picks_the_format_and_a_bad_one_is_refused():
    code = "from aegis_agent import logs; import logging; logs.configure(); logging.getLogger('x').info('hello')"
    for log_format, check in (("json", lambda line: json.loads(line)["event"] == "hello"), ("", None)):
        env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": log_format}
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        line = result.stderr.strip()
        assert check(line) if check else line.endswith("Z INFO x hello"), line
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "xml"}
    result = subprocess.run(
        [sys.executable, "-m", "aegis_agent.simulate", "--count", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "LOG_FORMAT must be json or plain" in result.stderr
