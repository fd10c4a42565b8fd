"""docs/first-hour.md as data: the quotes it promises, its runnable shell blocks, and how their outputs are compared.

A runnable block is a ```sh fence right after the line ``<!-- first-hour: runnable -->``.
In it, a command is a line and its ``\\`` continuations; the comment lines right after a
command are its documented output (joined with a space). An output is what the real
``curl`` prints, abbreviated:

- ``…`` where a member of an object or the rest of a list is left out (an object without
  ``…`` must have exactly the documented keys), and ``…`` inside a string for any text;
- a trailing ``NNN`` is the HTTP status (the command's ``-w ' %{http_code}\\n'``).

Everything else must be equal, ids included: the test follows the page from a fresh stack,
so its ids are the doc's. Times are always elided.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.browser.stack import REPO

DOC = REPO / "docs" / "first-hour.md"
RUNNABLE = "<!-- first-hour: runnable -->"
ELIDED = "…"
_STATUS = re.compile(r"^(?P<body>.*?)\s+(?P<status>\d{3})$", re.S)
_ELIDED_KEY = "\u2026elided"


def doc_text() -> str:
    return DOC.read_text()


def flat(text: str) -> str:
    """The doc's prose with its line breaks and quote markers folded, for looking up a sentence."""
    return re.sub(r"\s+", " ", re.sub(r"^\s*>\s?", "", text, flags=re.M))


def says(quote: str) -> str:
    """``quote`` as the walkthrough says it (the test then checks the page says it too)."""
    assert quote in flat(doc_text()), f"docs/first-hour.md no longer says: {quote!r}"
    return quote


@dataclass(frozen=True)
class Step:
    command: str
    expected: str | None  # the documented output, None when the doc shows none
    line: int  # in the doc, for messages

    @property
    def is_read(self) -> bool:
        """A GET: safe to run again until the documented state shows (a job finishing, a task starting)."""
        return self.command.startswith("curl ") and " -X " not in self.command


def runnable_blocks(text: str) -> list[list[Step]]:
    lines = text.splitlines()
    blocks: list[list[Step]] = []
    for index, line in enumerate(lines):
        if line.strip() != RUNNABLE:
            continue
        assert lines[index + 1].strip() == "```sh", f"line {index + 2}: {RUNNABLE} must be followed by a ```sh fence"
        end = lines.index("```", index + 2)
        blocks.append(_steps(lines[index + 2 : end], first_line=index + 3))
    return blocks


def _steps(lines: list[str], first_line: int) -> list[Step]:
    steps: list[Step] = []
    position = 0
    while position < len(lines):
        start = position
        command = [lines[position]]
        while command[-1].endswith("\\"):
            position += 1
            command.append(lines[position])
        position += 1
        expected = []
        while position < len(lines) and lines[position].startswith("# "):
            expected.append(lines[position][2:].strip())
            position += 1
        assert not command[0].startswith("#"), f"line {first_line + start}: a comment with no command before it"
        steps.append(Step("\n".join(command), " ".join(expected) or None, first_line + start))
    return steps


# --- comparing an output with the documented one --------------------------------------------------------------------


def parse_documented(text: str) -> tuple[Any, int | None]:
    """The documented output as (JSON value with elision markers, status or None)."""
    status = None
    found = _STATUS.match(text)
    if found and found.group("body").rstrip().endswith(("}", "]")):
        text, status = found.group("body"), int(found.group("status"))
    return json.loads(_mark_elisions(text)), status


def _mark_elisions(text: str) -> str:
    """Turn each ``…`` outside a string into JSON: a member ``"…elided": null`` in an object, an element in a list."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]":
            stack.pop()
        if char == ELIDED:
            out.append(f'"{_ELIDED_KEY}": null' if stack and stack[-1] == "{" else f'"{_ELIDED_KEY}"')
        else:
            out.append(char)
    return "".join(out)


def parse_actual(text: str) -> tuple[Any, int | None]:
    text = text.strip()
    status = None
    found = _STATUS.match(text)
    if found:
        text, status = found.group("body"), int(found.group("status"))
    try:
        return json.loads(text), status
    except json.JSONDecodeError:
        return text, status


def mismatch(documented: Any, actual: Any, path: str = "$") -> str | None:
    """Where ``actual`` differs from the documented value, or None when it matches."""
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return f"{path}: documented an object, got {actual!r}"
        elided = _ELIDED_KEY in documented
        missing = [key for key in documented if key != _ELIDED_KEY and key not in actual]
        if missing:
            return f"{path}: missing {missing}"
        extra = [key for key in actual if key not in documented]
        if extra and not elided:
            return f"{path}: not documented (and no …): {extra}"
        for key, value in documented.items():
            if key == _ELIDED_KEY:
                continue
            found = mismatch(value, actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return f"{path}: documented a list, got {actual!r}"
        elided = bool(documented) and documented[-1] == _ELIDED_KEY
        items = documented[:-1] if elided else documented
        if len(actual) < len(items) or (not elided and len(actual) != len(items)):
            return f"{path}: documented {len(items)} items{' or more' if elided else ''}, got {len(actual)}"
        for index, item in enumerate(items):
            found = mismatch(item, actual[index], f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(documented, str) and ELIDED in documented:
        pattern = ".*".join(re.escape(part) for part in documented.split(ELIDED))
        if isinstance(actual, str) and re.fullmatch(pattern, actual, re.S):
            return None
        return f"{path}: {actual!r} does not read {documented!r}"
    if documented != actual or type(documented) is not type(actual):
        return f"{path}: documented {documented!r}, got {actual!r}"
    return None


def compare(documented_text: str, output: str) -> str | None:
    documented, documented_status = parse_documented(documented_text)
    actual, status = parse_actual(output)
    if documented_status is not None and status != documented_status:
        return f"status: documented {documented_status}, got {status} ({output[:300]!r})"
    return mismatch(documented, actual)


# --- running the commands in one shell, as a reader's terminal would -------------------------------------------------


class Shell:
    """One bash process: variables set by one command are there for the next, like in a terminal."""

    SENTINEL = "__first_hour_done__"

    def __init__(self, cwd: Path) -> None:
        env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.run("set -o pipefail")

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run ``command``; its exit status and everything it printed."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{command}\nprintf '\\n{self.SENTINEL} %s\\n' $?\n".encode())
        self.proc.stdin.flush()
        buffer = b""
        deadline = time.monotonic() + timeout
        marker = re.compile(rb"\n" + self.SENTINEL.encode() + rb" (\d+)\n")
        while not (found := marker.search(buffer)):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no end of {command!r} within {timeout} s; printed {buffer[-2000:]!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                buffer += os.read(self.proc.stdout.fileno(), 65536)
        return int(found.group(1)), buffer[: found.start()].decode()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
