"""The task page's live output tail in a real browser, fed through the real bridge (issue 17, item 4).

A simulated agent (``demo-0``) runs a long ``sleep``; meanwhile this test publishes that task's
output as the agent would (``aegis_agent.wire.task_log`` on ``aegis/agents/demo-0/logs``, QoS 1)
through the stack's broker, so every chunk goes broker → bridge → database → websocket → page.
It measures, for each marker line, how long after its publish the page shows it, and prints the
figures; it asserts only a generous bound (the issue's target is under 2 s, on an idle machine).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from playwright.sync_api import Page, expect

from aegis_agent import wire
from tests.browser.conftest import screenshot
from tests.browser.stack import AGENT_PREFIX, Stack
from tests.browser.test_admin_browser import fill_job_form, launch, open_job_form
from tests.support import wait_for

AGENT = f"{AGENT_PREFIX}0"
SHOWN_WITHIN_MS = 30_000  # generous, for a loaded 2-core machine; the lag figures are printed, not asserted
MARKERS = 12


def broker_port(stack: Stack) -> int:
    """The port of the stack's embedded broker (its first process, started with ``--port``)."""
    argv = [str(arg) for arg in stack.procs[0].args]
    return int(argv[argv.index("--port") + 1])


class AgentOutput:
    """Publishes a task's output as its agent would: seq gap-free from 1, QoS 1, each publish acknowledged."""

    def __init__(self, stack: Stack, task_id: int, attempt: int) -> None:
        self.task_id, self.attempt, self.seq = task_id, attempt, 0
        self.sent = bytearray()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{AGENT}-output-test", protocol=mqtt.MQTTv311
        )
        self.connected = threading.Event()
        self.client.on_connect = lambda *_args: self.connected.set()
        self.client.connect("127.0.0.1", broker_port(stack))
        self.client.loop_start()
        assert self.connected.wait(30), "could not connect to the stack's broker"

    def write(self, data: bytes, stream: str = "stdout") -> float:
        """Publish one chunk; the time it was handed to the broker (acknowledged)."""
        self.seq += 1
        message = wire.task_log(self.task_id, self.attempt, self.seq, stream, data)
        info = self.client.publish(wire.Topics(AGENT).logs, message, qos=1)
        info.wait_for_publish(30)
        self.sent += data
        return time.monotonic()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def running_task(stack: Stack, admin_page: Page) -> tuple[int, int]:
    """A two-minute sleep on demo-0, running: (task id, attempt)."""
    open_job_form(stack, admin_page)
    fill_job_form(admin_page, "sleep", '{"seconds": 120}', agent_ids=AGENT)
    job_id = launch(admin_page)
    task = wait_for(
        lambda: stack.query(
            "SELECT id, attempt FROM tasks WHERE job_id = ? AND state IN ('assigned', 'running')", (job_id,)
        ),
        f"job {job_id}'s task to be held by {AGENT}",
        timeout=60,
        interval=0.3,
    )
    return task[0][0], task[0][1]


def box_text(page: Page) -> str:
    return str(page.locator("#task-output-lines").text_content() or "")


def test_the_tail_follows_a_running_task_live_safely_and_downloads_the_exact_bytes(
    stack: Stack, admin_page: Page, running_task: tuple[int, int], tmp_path: Path
) -> None:
    page = admin_page
    task_id, attempt = running_task
    page.goto(f"{stack.url}/admin/tasks/task/{task_id}/change/")
    expect(page.locator("#task-output-status")).not_to_have_text("connecting…")
    output = AgentOutput(stack, task_id, attempt)
    try:
        # Live, in order: each marker's lag from its publish to the page.
        lags_ms = []
        for number in range(1, MARKERS + 1):
            published = output.write(f"marker-{number:03d} step {number} of {MARKERS}\n".encode())
            page.wait_for_function(
                "text => document.getElementById('task-output-lines').textContent.includes(text)",
                arg=f"marker-{number:03d}",
                timeout=SHOWN_WITHIN_MS,
            )
            lags_ms.append((time.monotonic() - published) * 1000)
        print(
            f"\nlive tail lag over {MARKERS} markers (publish → shown): p50 {statistics.median(lags_ms):.0f} ms, "
            f"max {max(lags_ms):.0f} ms, each: {[round(lag) for lag in lags_ms]}"
        )
        shown = box_text(page)
        positions = [shown.index(f"marker-{number:03d}") for number in range(1, MARKERS + 1)]
        assert positions == sorted(positions), "the markers are not shown in the order printed"

        # ANSI colours become styled spans; other escapes are removed; a script the task printed stays text.
        output.write(b"\x1b[1;31mbold red\x1b[0m plain \x1b[42mon green\x1b[0m\x1b]0;title\x07\x1b[2Kcleared\n")
        hostile = b'<script>window.__tail_pwned = 1</script><img src=x onerror="window.__tail_pwned = 2">\n'
        output.write(hostile, "stderr")
        red = page.locator("#task-output-lines span.ansi-fg-1.ansi-bold", has_text="bold red")
        expect(red).to_have_count(1)
        expect(page.locator("#task-output-lines span.ansi-bg-2", has_text="on green")).to_have_count(1)
        page.wait_for_function("() => document.getElementById('task-output-lines').textContent.includes('onerror')")
        shown = box_text(page)
        assert "\x1b" not in shown
        assert "title" not in shown
        assert "bold red plain on greencleared\n" in shown
        assert '<script>window.__tail_pwned = 1</script><img src=x onerror="window.__tail_pwned = 2">' in shown
        assert page.locator("#task-output-lines script, #task-output-lines img").count() == 0
        assert page.evaluate("() => window.__tail_pwned") is None

        # Scrolling up pauses the tail; new lines are counted, not scrolled to; resume goes back to the end.
        for number in range(80):
            output.write(f"filler line {number}\n".encode())
        shows = "text => document.getElementById('task-output-lines').textContent.includes(text)"
        page.wait_for_function(shows, arg="filler line 79")
        box = page.locator("#task-output-lines")
        assert page.evaluate(
            "() => { const b = document.getElementById('task-output-lines'); return b.scrollHeight > b.clientHeight; }"
        ), "the output does not fill its box"
        box.evaluate("el => { el.scrollTop = 0; }")
        expect(page.locator("#task-output-paused")).to_be_visible()
        for number in range(5):
            output.write(f"while paused {number}\n".encode())
        expect(page.locator("#task-output-paused-text")).to_have_text("paused — 5 new lines")
        assert box.evaluate("el => el.scrollTop") == 0, "a paused tail scrolled"
        screenshot(page, "task-output-tail-paused")
        page.click("#task-output-resume")
        expect(page.locator("#task-output-paused")).to_be_hidden()
        assert box.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") <= 8

        # Download: the whole attempt, byte for byte, as a file.
        with page.expect_download() as download_info:
            page.click("#task-output-download")
        download = download_info.value
        assert re.fullmatch(rf"task-{task_id}-attempt-{attempt}\.log", download.suggested_filename)
        saved = tmp_path / "output.log"
        download.save_as(saved)
        assert saved.read_bytes() == bytes(output.sent)
    finally:
        output.close()


def test_the_ansi_renderer_keeps_sgr_colours_and_bold_and_drops_everything_else(
    stack: Stack, admin_page: Page, running_task: tuple[int, int]
) -> None:
    """The page's renderer itself (window.AegisAnsi), fed edge cases, including a sequence cut between chunks."""
    page = admin_page
    page.goto(f"{stack.url}/admin/tasks/task/{running_task[0]}/change/")
    segments = page.evaluate(
        """() => {
            const r = new window.AegisAnsi.Renderer();
            const out = [];
            for (const part of ["a\\x1b[3", "1mred\\x1b[0m", "\\x1b[38;5;200mx\\x1b[m", "\\x1b[97;44mhi\\x1b[39;49m",
                                "b\\rc\\x07\\x00d", "\\x1b[?25l\\x1b[5Ae\\x1b(Bf", "\\x1b[1mB\\x1b[22mn"]) {
                for (const s of r.render(part)) { out.push([s.text, s.classes.join(" ")]); }
            }
            return out;
        }"""
    )
    assert segments == [
        ["a", ""],
        ["red", "ansi-fg-1"],
        ["x", ""],  # 256 colours: not rendered, and its 200 is not read as a code
        ["hi", "ansi-fg-15 ansi-bg-4"],
        ["bcd", ""],
        ["e", ""],
        ["f", ""],
        ["B", "ansi-bold"],
        ["n", ""],
    ]
