"""Runs the shell blocks of the operations docs: which blocks, with what, and the scratch stack they run against.

A shell block (```sh, bash, shell, console) is preceded by a marker line a reader's renderer hides:

- ``<!-- runnable -->``: the block runs as one bash script (``set -euo pipefail``, cwd a scratch directory), in
  document order; what it exports is kept for the blocks after it.
- ``<!-- runnable: log-query -->``: each command line runs on its own and must exit 0 and print something
  (a query that finds nothing after its event was produced is a failure).
- ``<!-- not-run: REASON -->``: cannot run here (systemd, Compose, Kubernetes, ...); the reason is required.

Nothing in a block is substituted except what ``PLACEHOLDERS`` lists: literal text of the docs and what it
stands for on the scratch stack. ``manage.py`` is a shell function for the virtualenv's ``python manage.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "operations.md", *sorted((ROOT / "docs").glob("ops-*.md"))]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>runnable|not-run)\s*(?::\s*(?P<detail>.*?))?\s*-->\s*$")

# Literal text of the docs -> what it means on the scratch stack. Each entry is used by some runnable block
# (test_every_placeholder_is_used), so the table cannot rot. The values are bash, run inside the block.
PLACEHOLDERS: dict[str, str] = {
    # the web role: daphne on a free port instead of 8000
    "http://127.0.0.1:8000": "$RUNBOOK_WEB_URL",
    # "the log of the role processes": the captured stderr of web, bridge and dispatcher, JSON lines
    "journalctl -u aegis-web -o cat |": 'cat "$RUNBOOK_LOGS/web.log" |',
    "... |": 'cat "$RUNBOOK_LOGS/web.log" "$RUNBOOK_LOGS/bridge.log" "$RUNBOOK_LOGS/dispatcher.log" |',
    # an example request id and task id: the ones of the request and the task the runner produced
    # (inside jq's single quotes, so the value is written in: {NAME} is the runner's environment variable)
    '"6f1c..."': '"{RUNBOOK_REQUEST_ID}"',
    ".task_id == 41": ".task_id == {RUNBOOK_TASK_ID}",
    # the example agent of ops-certs.md: edge-01, issued a certificate by operations.md, and one of its serials
    "agent-17": "edge-01",
    "5f3a…": '"$(cd "$BROKER_DIR/issued" && ls edge-01-*.crt | head -1 | sed "s/^edge-01-//; s/[.]crt$//")"',
    # operators' paths: the scratch stack's directories
    "/etc/aegis/broker": "$BROKER_DIR",
    "/etc/aegis/backup.key": "$RUNBOOK_SCRATCH/backup.key",
    "/srv/backups/": "$RUNBOOK_SCRATCH/backups/",
    "/srv/b/": "$RUNBOOK_SCRATCH/b/",
    # the service manager: the test's own Mosquitto (a supervised process on the scratch broker directory)
    "systemctl restart mosquitto": "runbook_restart_mosquitto",
}

PREAMBLE = r"""
set -euo pipefail
manage.py() { "$RUNBOOK_PYTHON" "$RUNBOOK_ROOT/manage.py" "$@"; }
runbook_restart_mosquitto() {
  kill "$(cat "$RUNBOOK_MOSQUITTO_PID")"
  for _ in $(seq 100); do
    sleep 0.1
    if (exec 3<>"/dev/tcp/127.0.0.1/$RUNBOOK_MQTT_PORT") 2>/dev/null; then return 0; fi
  done
  echo "mosquitto did not come back" >&2; return 1
}
"""


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    kind: str  # "runnable", "not-run" or "" (unmarked)
    detail: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def log_query(self) -> bool:
        return self.kind == "runnable" and self.detail == "log-query"


def shell_blocks(paths: list[Path] = DOCS) -> list[Block]:
    """Every fenced shell block of ``paths``, with the marker on the last non-blank line before its fence."""
    blocks = []
    for path in paths:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = FENCE.match(lines[index])
            if not opening:
                index += 1
                continue
            indent, language = opening["indent"], opening["info"].strip().split(" ")[0]
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
            body = [
                line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[index + 1 : end]
            ]
            if language in SHELL_LANGUAGES:
                previous = next((lines[j] for j in range(index - 1, -1, -1) if lines[j].strip()), "")
                marker = MARKER.match(previous)
                blocks.append(
                    Block(
                        path,
                        index + 1,
                        language,
                        "\n".join(body) + "\n",
                        marker["kind"] if marker else "",
                        (marker["detail"] or "") if marker else "",
                    )
                )
            index = end + 1
    return blocks


def substitute(text: str, env: dict[str, str]) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, re.sub(r"\{(RUNBOOK_[A-Z_]+)\}", lambda name: env[name[1]], value))
    return text


def commands(text: str) -> list[str]:
    """The command lines of a block: comments dropped, backslash continuations joined."""
    joined = text.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Outcome:
    block: Block
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and (not self.block.log_query or bool(self.stdout.strip()))

    def describe(self) -> str:
        why = f"exit {self.returncode}" if self.returncode else "printed nothing"
        return (
            f"{self.block.where}: {why}\n  $ {self.command.strip()}\n"
            f"  stdout: {self.stdout[-1500:]!r}\n  stderr: {self.stderr[-1500:]!r}"
        )


@dataclass
class Runner:
    """Runs blocks in order, keeping what each exports in a state file for the next."""

    env: dict[str, str]
    scratch: Path
    timeout: float = 120
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.scratch / "exported.sh"

    def run_block(self, block: Block) -> list[Outcome]:
        scripts = [block.text] if not block.log_query else commands(block.text)
        results = []
        for script in scripts:
            results.append(self._run(block, script))
            if not results[-1].passed and not block.log_query:
                break
        self.outcomes.extend(results)
        return results

    def _run(self, block: Block, script: str) -> Outcome:
        state = self.state
        state.touch()
        # An operator's working directory, not the repository: `issue_agent_cert edge-01` writes ./edge-01.
        workdir = self.scratch / "cwd"
        workdir.mkdir(exist_ok=True)
        program = f'{PREAMBLE}\nsource "{state}"\n{substitute(script, self.env)}\nexport -p > "{state}"\n'
        try:
            done = subprocess.run(  # nosec B603 B607 (the docs' own commands, on a scratch stack)
                ["bash", "-c", program],
                cwd=workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
            return Outcome(block, script, done.returncode, done.stdout, done.stderr)
        except subprocess.TimeoutExpired as expired:
            return Outcome(block, script, -1, str(expired.stdout or ""), f"timed out after {self.timeout:.0f}s")


class ScratchDatabase:
    """A PostgreSQL database of its own next to the test run's (restore and the drill rename and drop there)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.name = f"{parts.path.lstrip('/')}_runbook_{uuid.uuid4().hex[:6]}"
        self.url = urlunsplit(parts._replace(path="/" + self.name))
        self.admin_url = urlunsplit(parts._replace(path="/postgres"))

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(sql)

    def create(self) -> None:
        self._execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            names = [
                row[0]
                for row in connection.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s", (self.name.replace("_", r"\_") + "%",)
                )
            ]
            for name in names:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class SupervisedMosquitto:
    """Mosquitto from the generated configuration, restarted by a shell loop whenever it exits.

    ``systemctl restart mosquitto`` in the docs maps to killing the current process (its pid is in
    ``pid_file``); the loop starts it again on the same configuration, as systemd would.
    """

    def __init__(self, conf: Path, scratch: Path) -> None:
        self.pid_file = scratch / "mosquitto.pid"
        self.stop_file = scratch / "mosquitto.stop"
        loop = (
            f'while [ ! -e "{self.stop_file}" ]; do "{shutil.which("mosquitto")}" -c "{conf}" & '
            f'echo $! > "{self.pid_file}"; wait $!; sleep 0.1; done'
        )
        self.process = subprocess.Popen(["bash", "-c", loop], cwd=scratch)  # nosec B603 B607

    def stop(self) -> None:
        self.stop_file.touch()
        if self.pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pid_file.read_text()), 15)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def manage(env: dict[str, str], *argv: str, timeout: float = 180) -> str:
    done = subprocess.run(  # nosec B603
        [sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"manage.py {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for_text(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")
