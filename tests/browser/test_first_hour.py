"""docs/first-hour.md, followed as a newcomer would: its clicks in a browser, its curl commands in a shell.

The walkthrough starts from a fresh ``make run``, so this module starts a stack of its
own (``run_all`` with three simulated agents on a new SQLite file; the package's shared
stack has had agents drained and jobs run by other tests) and a browser profile of its own
(the shared one's session cookie is for the shared stack: cookies do not tell ports apart).
The tests follow the page section by section, in order, on that one stack and one shell:
run the module as a whole. The ids are then the doc's own.

Each sentence the walkthrough promises on a page is looked up in the doc (``says``) and then
on the page, so a page and its walkthrough cannot drift apart unnoticed. The doc's runnable
shell blocks run with the real ``curl`` in one bash, with the stack's address and password
file put in for the documented ones (``substitutions``); each output is compared with the
one the doc shows under the command (tests/browser/first_hour_doc.py says how). Screenshots:
test-artifacts/browser/first-hour-*.png, the stack's logs in test-artifacts/browser/first-hour/.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, expect

from tests.browser.conftest import fresh_context, kept_on_failure, log_in, screenshot
from tests.browser.first_hour_doc import Shell, Step, compare, doc_text, flat, runnable_blocks, says
from tests.browser.stack import AGENT_PREFIX, AGENTS, Stack, running_stack
from tests.support import wait_for

AGENT_IDS = [f"{AGENT_PREFIX}{i}" for i in range(AGENTS)]
LIVE_WAIT_MS = 60_000  # a task's two 10 s attempts and a backoff, on a loaded machine
READ_AGAIN_S = 90.0  # how long a documented GET is run again until its documented output shows


@pytest.fixture(scope="module")
def fresh(chromium: None, artifacts: Path) -> Iterator[Stack]:
    """A stack as ``make run`` starts it, for this walkthrough alone; its logs beside the screenshots."""
    logs = artifacts / "first-hour"
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aegis-first-hour-") as tmp, running_stack(Path(tmp), logs) as running:
        yield running


@pytest.fixture(scope="module")
def context(chromium: None, playwright: Playwright) -> Iterator[BrowserContext]:
    with fresh_context(playwright) as browser:
        yield browser


@pytest.fixture
def tab(request: pytest.FixtureRequest, context: BrowserContext, artifacts: Path) -> Iterator[Page]:
    """A page of this module's browser; on a failure its screenshot and HTML are kept, as the package's page does."""
    with kept_on_failure(request, context, artifacts) as page:
        yield page


@pytest.fixture(scope="module")
def shell(fresh: Stack) -> Iterator[Shell]:
    """The reader's second terminal: one bash for every runnable block, in a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="aegis-first-hour-shell-") as cwd:
        terminal = Shell(Path(cwd))
        try:
            yield terminal
        finally:
            terminal.close()


def substitutions(stack: Stack) -> dict[str, str]:
    """The documented address and password file, and the test stack's: the only edits made to the doc's commands."""
    return {
        "http://127.0.0.1:8000": stack.url,
        "var/admin_password.txt": str(stack.data_dir / "admin_password.txt"),
    }


@dataclass(frozen=True)
class Outcome:
    output: str
    problem: str | None  # how the output differs from the documented one (or the exit status), None: as documented


def run_step(shell: Shell, step: Step, command: str) -> Outcome:
    status, output = shell.run(command)
    if status:
        return Outcome(output, f"exit status {status}")
    return Outcome(output, None if step.expected is None else compare(step.expected, output))


def run_documented(shell: Shell, step: Step, command: str) -> Outcome:
    """Run a step; a read (GET) of a documented state still to come (a job finishing) runs again, as the doc says."""
    last = [run_step(shell, step, command)]
    if last[0].problem is not None and step.is_read:

        def as_documented() -> bool:
            last[0] = run_step(shell, step, command)
            return last[0].problem is None

        with suppress(AssertionError):  # the assertion below says what differed
            wait_for(as_documented, f"line {step.line}", timeout=READ_AGAIN_S, interval=0.5)
    return last[0]


def job_state(stack: Stack, job_id: int) -> str:
    return str(stack.scalar("SELECT state FROM jobs WHERE id = ?", (job_id,)))


def launched(page: Page, message: str) -> int:
    """Press Launch; the job's page must open with the launch message the walkthrough quotes, word for word."""
    page.click("[name=_launch]")
    page.wait_for_url(re.compile(r"/admin/tasks/job/\d+/change/"))
    expect(page.locator(".messagelist")).to_have_text(says(message))
    found = re.fullmatch(r"Launched job (\d+) with \d+ tasks\.", message)
    assert found, message
    assert page.url.endswith(f"/admin/tasks/job/{found.group(1)}/change/"), page.url
    return int(found.group(1))


def log_in_if_needed(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/admin/")
    if "/admin/login/" in page.url:
        log_in(page, stack)
        page.wait_for_url(f"{stack.url}/admin/")


def run_block(shell: Shell, stack: Stack, number: int) -> None:
    """Run the doc's runnable block ``number`` (0 is the first) and check every documented output."""
    blocks = runnable_blocks(doc_text())
    table = substitutions(stack)
    for step in blocks[number]:
        command = step.command
        for documented, actual in table.items():
            command = command.replace(documented, actual)
        outcome = run_documented(shell, step, command)
        assert outcome.problem is None, (
            f"docs/first-hour.md line {step.line}: {step.command}\n{outcome.problem}\nprinted: {outcome.output[:1500]}"
        )


def open_add_job(page: Page, stack: Stack) -> None:
    """'On the dashboard, in the Tasks box on the right, click Add next to Jobs.'"""
    page.goto(f"{stack.url}/admin/")
    page.locator("tr.model-job a.addlink").click()
    page.wait_for_url(f"{stack.url}/admin/tasks/job/add/")


# --- 1. make run -------------------------------------------------------------------------------------------------


def test_make_run_prints_the_address_the_password_and_the_agents(fresh: Stack) -> None:
    stack = fresh
    printed = (stack.logs / "run_all.log").read_text()
    doc = flat(doc_text())
    documented = {
        "Aegis Event Bus is starting: http://127.0.0.1:8000/admin/": f"Aegis Event Bus is starting: {stack.url}/admin/",
        "Admin login: user 'admin', password '": f"Admin login: user 'admin', password '{stack.password}'",
        "SECRET_KEY is not set: using a generated development key": "check=aegis.W001",
        "daphne -v 0 -b 127.0.0.1 -p 8000 aegis_site.asgi:application": (
            f"daphne -v 0 -b 127.0.0.1 -p {stack.url.rsplit(':', 1)[1]} aegis_site.asgi:application"
        ),
        "all 3 agents online after": f"all {AGENTS} agents online after",
    }
    for quote, line in documented.items():
        assert quote in doc, f"docs/first-hour.md no longer shows: {quote!r}"
        assert line in printed, f"run_all did not print {line!r}"
    assert says("kept in `var/admin_password.txt`")
    assert (stack.data_dir / "admin_password.txt").read_text().strip() == stack.password


# --- 2, 3: log in, the dashboard, the first job ------------------------------------------------------------------


def test_log_in_look_around_and_launch_an_echo_job(fresh: Stack, tab: Page) -> None:
    page, stack = tab, fresh
    log_in(page, stack)  # the login form, admin and the printed password
    page.wait_for_url(f"{stack.url}/admin/")

    expect(page.locator("#dash-agents [data-count=online] .n")).to_have_text(str(AGENTS))
    expect(page.locator("#dash-agents [data-count=offline] .n")).to_have_text("0")
    says('"3 can take work"')
    expect(page.locator("#dash-agents [data-count=dispatchable] .n")).to_have_text(str(AGENTS))
    expect(page.locator("#dash-agents [data-count=dispatchable] .l")).to_have_text("can take work")
    says("**Queue**: 0 queued")
    expect(page.locator("#dash-queue [data-count=queued] .n")).to_have_text("0")
    expect(page.locator("#dash-queue")).to_contain_text(says("Reconciliation: no task whose state contradicts reality"))
    health = page.locator("#dash-health")
    broker = health.locator("li[data-role=broker]")
    expect(broker).to_have_text(says("Broker reachable (a bridge is connected)"), timeout=30_000)
    for role in ("bridge", "dispatcher"):
        expect(health.locator(f"li[data-role={role}]")).to_have_class("good", timeout=30_000)
        expect(health.locator(f"li[data-role={role}]")).to_contain_text("1 running")
    expect(page.locator("#live-status")).to_have_text(says("a green **live**").split("**")[1])
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    screenshot(page, "first-hour-1-dashboard")

    page.goto(f"{stack.url}/admin/registry/agent/")
    for agent_id in AGENT_IDS:
        row = page.locator("#result_list tbody tr", has_text=agent_id)
        expect(row).to_contain_text("online")
        expect(row).to_contain_text("simulated=true")
        for capability in ("echo", "noop", "sleep"):
            expect(row).to_contain_text(capability)

    # 3. Your first job, in the admin.
    open_add_job(page, stack)
    page.fill("#id_kind", "echo")
    page.fill("#id_payload", '{"say": "hi"}')
    page.fill("#id_labels-0-key", "simulated")
    expect(page.locator("#id_labels-0-op")).to_have_value("=")
    page.fill("#id_labels-0-value", "true")
    jobs_before = stack.scalar("SELECT COUNT(*) FROM jobs")
    page.click("[name=_preview]")
    preview = page.locator("#job-preview")
    expect(preview).to_contain_text(says("3 matching agents, 3 tasks. All are online and active."))
    expect(preview).to_contain_text(says("Rollout: all tasks at once (no limit)."))
    for agent_id in AGENT_IDS:
        expect(preview.locator(f"li[data-agent='{agent_id}']")).to_have_text(f"{agent_id} online")
    assert stack.scalar("SELECT COUNT(*) FROM jobs") == jobs_before, "the preview wrote a job"
    screenshot(page, "first-hour-2-preview")

    job_id = launched(page, "Launched job 1 with 3 tasks.")
    # "Now watch, without reloading": the badge and the line change in place.
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#job-state")).to_have_text(says("**succeeded**").strip("*"), timeout=LIVE_WAIT_MS)
    expect(page.locator("#job-outcome")).to_have_text(says("3 of 3 tasks finished: 3 succeeded, 0 failed, 0 canceled"))
    assert page.evaluate("window.__notReloaded") is True, "the page was reloaded"
    rows = page.locator("#job-task-table tbody tr")
    expect(rows).to_have_count(AGENTS)
    for index in range(AGENTS):
        row = rows.nth(index)
        expect(row.locator(".task-attempt")).to_have_text("1/3")
        expect(row.locator(".task-attempt-reason")).to_have_text(says('"first attempt"').strip('"'))
        expect(row.locator(".task-duration")).to_have_text(re.compile(r"^waited \d+\.\d s, ran \d+\.\d s$"))
        expect(row).to_contain_text(says('`{"say": "hi"}`').strip("`"))
    says('a duration like "waited 0.5 s, ran 1.5 s"')
    assert job_state(stack, job_id) == "succeeded"
    screenshot(page, "first-hour-3-echo-succeeded")


# --- 4. the same with curl -----------------------------------------------------------------------------------------


def test_the_same_with_curl(fresh: Stack, shell: Shell) -> None:
    run_block(shell, fresh, 0)
    assert job_state(fresh, 2) == "succeeded"
    assert fresh.scalar("SELECT idempotency_key FROM jobs WHERE id = 2") == "first-hour-echo"


# --- 5. mistakes it catches ----------------------------------------------------------------------------------------


def test_the_form_catches_a_kind_nobody_runs_and_a_missing_target(fresh: Stack, tab: Page) -> None:
    page, stack = tab, fresh
    log_in_if_needed(page, stack)
    jobs_before = stack.scalar("SELECT COUNT(*) FROM jobs")

    open_add_job(page, stack)
    page.fill("#id_kind", "reboot")
    page.fill("#id_target_agent_ids", "demo-0 demo-1 demo-2")
    page.click("[name=_preview]")
    warning = says(
        "3 of the 3 matching agents do not offer the kind 'reboot' (it is not among their capabilities): their "
        "tasks will fail: demo-0, demo-1, demo-2."
    )
    expect(page.locator("#job-preview-warnings li[data-code=kind_not_offered]")).to_have_text(warning)
    checks = page.locator("#job-checks")
    expect(checks.locator("h2")).to_have_text(says("**Launch anyway?**").strip("*"))
    expect(checks).to_contain_text(says('"Launch although agents do not offer the kind"').strip('"'))
    screenshot(page, "first-hour-4-reboot-preview")

    page.click("[name=_launch]")
    expect(page.locator(".errornote")).to_have_text(says("Please correct the errors below. Nothing was launched."))
    refusal = page.locator(".field-allow_unsupported_kind .errorlist")
    expect(refusal).to_contain_text(warning)
    expect(refusal).to_contain_text(
        says('Tick "Launch although agents do not offer the kind" to launch it anyway.\'').rstrip("'")
    )
    assert "/admin/tasks/job/add/" in page.url
    screenshot(page, "first-hour-5-reboot-refused")

    open_add_job(page, stack)
    page.fill("#id_kind", "echo")
    page.click("[name=_launch]")
    expect(page.locator(".field-target_all .errorlist")).to_contain_text(
        says("The job has no target (no agent ids, labels or capabilities): it would go to every agent of the fleet.")
    )
    expect(page.locator(".field-target_all label")).to_have_text(
        says("**Target every agent of the fleet**").strip("*") + ":"
    )
    screenshot(page, "first-hour-6-no-target-refused")
    page.check("#id_target_all")
    page.click("[name=_preview]")
    expect(page.locator("#job-preview-fleet")).to_have_text(says("Target: every agent of the fleet (3)."))
    assert stack.scalar("SELECT COUNT(*) FROM jobs") == jobs_before, "a refused launch or a preview wrote a job"


def test_the_api_refuses_the_same_jobs_a_misspelt_field_and_a_reused_key(fresh: Stack, shell: Shell) -> None:
    jobs_before = fresh.scalar("SELECT COUNT(*) FROM jobs")
    run_block(shell, fresh, 1)
    assert fresh.scalar("SELECT COUNT(*) FROM jobs") == jobs_before, "a refused submission wrote a job"


# --- 6, 7: a job that fails, explain, reading the failure, retry failed ------------------------------------------


def test_a_failing_job_explained_read_and_retried(fresh: Stack, tab: Page) -> None:
    page, stack = tab, fresh
    log_in_if_needed(page, stack)
    open_add_job(page, stack)
    page.fill("#id_kind", "sleep")
    page.fill("#id_payload", '{"seconds": 60}')
    page.fill("#id_target_agent_ids", "demo-0, demo-1")
    page.fill("#id_max_attempts", "2")
    page.fill("#id_execution_timeout_s", "10")
    for field in ("**Max attempts** `2`", "**Execution timeout (s)** `10`", 'Payload** `{"seconds": 60}`'):
        says(field)
    job_id = launched(page, "Launched job 3 with 2 tasks.")
    job_url = page.url

    # Explain, while it runs: the first task of the table.
    first = page.locator("#job-task-table tbody tr").first
    task_id = int(first.get_attribute("data-task") or 0)
    first.locator("td").first.get_by_role("link").click()
    page.wait_for_url(re.compile(rf"/admin/tasks/task/{task_id}/change/"))
    agent = stack.scalar("SELECT agent_id FROM tasks WHERE id = ?", (task_id,))
    assert agent == "demo-0", agent  # the first of the agent ids typed, as in the doc
    explain = page.locator("#task-explain")
    documented = says(
        "running on agent demo-0 (attempt 1 of 2); should the agent not report in time, the lease expires at "
        "05:08:24 UTC, then the task is requeued (attempt 2 of 2)"
    )
    running = re.escape(documented).replace("05:08:24", r"\d\d:\d\d:\d\d")
    # The first attempt, or the second if this machine was slow to get here: both are what the doc says.
    second = re.escape(says("then the task ends timed out (attempt 2 of 2 was its last)"))
    expect(explain).to_have_text(
        re.compile(rf"^({running}|running on agent demo-0 \(attempt 2 of 2\).*{second})$"), timeout=LIVE_WAIT_MS
    )
    expect(page.locator("#task-summary")).to_contain_text(re.compile(r"State: running\s+attempt [12] of 2"))
    says("State: running attempt 1 of 2 (first attempt);")
    screenshot(page, "first-hour-7-explain-running")
    expect(explain).to_have_text(says("finished: timed out"), timeout=LIVE_WAIT_MS)

    # Reading the failure: back on the job's page.
    page.locator("#task-fields").get_by_role("link", name=says("the **job 3** link").split("**")[1], exact=True).click()
    page.wait_for_url(job_url)
    expect(page.locator("#job-state")).to_have_text(says("the badge **failed**").split("**")[1])
    expect(page.locator("#job-outcome")).to_have_text(
        says("2 of 2 tasks finished: 0 succeeded, 2 failed (2 timed out), 0 canceled")
    )
    expect(page.locator("#job-count-failed-total")).to_have_text(says('"failed: 2"').strip('"'))
    expect(page.locator("#job-count-failed")).to_have_text("0")
    expect(page.locator("#job-count-timed_out")).to_have_text("2")
    says('**timed out**, `execution_timeout`, "lease expired", 2')
    failure = page.locator("#job-failures tbody tr")
    expect(failure).to_have_count(1)
    expect(failure.locator("td")).to_have_text(["timed out", "execution_timeout", "lease expired", "2"])
    rows = page.locator("#job-task-table tbody tr")
    expect(rows).to_have_count(2)
    for index in range(2):
        row = rows.nth(index)
        expect(row.locator(".task-attempt")).to_have_text("2/2")
        expect(row.locator(".task-attempt-reason")).to_have_text(says('"retried after execution timeout"').strip('"'))
        expect(row.locator(".task-duration")).to_have_text(re.compile(r"^waited \d+\.\d s, ran 1\d\.\d s$"))
        expect(row).to_contain_text(says("`execution_timeout: lease expired`").strip("`"))
    says('a duration like "waited 12.1 s, ran 10.2 s"')
    screenshot(page, "first-hour-8-job-failed")

    page.goto(f"{stack.url}/admin/")
    tile = page.locator("#dash-throughput [data-count=failed]")
    expect(tile.locator(".l")).to_have_text(says('a **failed** tile that says "failed (2 timed out)"').split('"')[1])
    expect(tile.locator(".n")).to_have_text("2")

    # 7. Retry failed: the confirmation page first.
    page.goto(job_url)
    page.locator("#job-controls").get_by_role("button", name=says("**Retry failed…**").strip("*")).click()
    page.wait_for_url(re.compile(rf"/admin/tasks/job/{job_id}/retry-failed/"))
    content = page.locator("#content")
    expect(content.locator("h1")).to_have_text(says("Retry the failed tasks of job 3?"))
    expect(page.locator("#job-retry-count")).to_have_text(says("2 failed or timed-out tasks will be queued again."))
    expect(page.locator("#job-retry-attempts")).to_have_text(
        says(
            "Attempt 3 of 4 next: 2 more attempts: the job's max_attempts (2); the attempts already made stay in "
            "each task's history."
        )
    )
    expect(page.locator("#job-retry-backoff")).to_have_text(
        says(
            "If the next attempt fails too, the task waits 10-20 s (the backoff goes on growing from the attempt "
            "number); with the backoff reset, 2.5-5 s (from backoff base 5 s again)."
        )
    )
    reset = says("**Reset the backoff: delays between the new attempts start again from the base**").strip("*")
    label = page.locator("label[for=id_reset_backoff]")
    expect(label).to_have_text(reset)
    box, font = label.bounding_box(), label.evaluate("node => parseFloat(getComputedStyle(node).fontSize)")
    assert box is not None
    assert box["height"] < 2 * font, f"the reset-backoff label wraps: {box}, font size {font}"  # one line
    screenshot(page, "first-hour-9-retry-confirmation")
    page.check("#id_reset_backoff")
    page.locator("#job-retry-confirm").click()
    assert says("**Retry 2 tasks**")
    page.wait_for_url(job_url)
    expect(page.locator(".messagelist")).to_contain_text(
        says(
            "Queued 2 failed tasks again: attempt 3 of 4 next (2 more attempts: the job's max_attempts); the backoff "
            "starts again from the base."
        )
    )
    expect(page.locator("#job-state")).to_have_text("running")
    says("the badge is **running** again")
    reasons = page.locator("#job-task-table .task-attempt-reason")
    expect(reasons).to_have_text([says('"retried by admin"').strip('"')] * 2)
    # The reset is recorded: the tasks' backoff counts from the 2 attempts made before the retry.
    reset_at = stack.query("SELECT backoff_from_attempt FROM tasks WHERE job_id = ? ORDER BY id", (job_id,))
    assert reset_at == [(2,), (2,)], reset_at
    screenshot(page, "first-hour-10-retried")

    # Clone: the form filled in from the job.
    page.locator("#job-clone").click()
    says("click **Clone** on its page")
    page.wait_for_url(re.compile(rf"/admin/tasks/job/add/\?clone={job_id}"))
    expect(page.locator("#id_kind")).to_have_value("sleep")
    expect(page.locator("#id_payload")).to_have_value(re.compile(r'"seconds": 60'))
    expect(page.locator("#id_target_agent_ids")).to_have_value(re.compile(r"^demo-0[,\s]+demo-1$"))
    expect(page.locator("#id_max_attempts")).to_have_value("2")
    expect(page.locator("#id_execution_timeout_s")).to_have_value("10")
    says("(kind `sleep`, payload, agent ids, max attempts 2, execution timeout 10)")
    page.fill("#id_execution_timeout_s", says("an **Execution timeout (s)** of `90`").split("`")[1])
    launched(page, "Launched job 4 with 2 tasks.")  # it succeeds after its minute of sleep: see the last test


def test_a_failing_job_with_curl(fresh: Stack, shell: Shell) -> None:
    run_block(shell, fresh, 2)
    assert fresh.query("SELECT id, job_id, agent_id FROM tasks WHERE job_id = 5") == [(11, 5, "demo-2")]


def test_the_clone_with_a_longer_timeout_succeeds(fresh: Stack, tab: Page) -> None:
    """The end of section 7's admin part, checked last: the clone's tasks sleep their minute (launched above)."""
    page = tab
    log_in_if_needed(page, fresh)
    says("about a minute later it has succeeded")
    page.goto(f"{fresh.url}/admin/tasks/job/4/change/")
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#job-outcome")).to_have_text("2 of 2 tasks finished: 2 succeeded, 0 failed, 0 canceled")
    expect(page.locator("#job-task-table .task-attempt")).to_have_text(["1/2", "1/2"])
    screenshot(page, "first-hour-11-clone-succeeded")


# --- the doc itself ---------------------------------------------------------------------------------------------


def test_every_curl_block_of_the_walkthrough_is_run_and_shows_outputs() -> None:
    text = doc_text()
    blocks = runnable_blocks(text)
    assert len(blocks) == 3, "sections 4, 5 and 7 each have one runnable block"
    curl_blocks = [block for block in re.findall(r"```sh\n(.*?)```", text, re.S) if "curl " in block]
    assert len(curl_blocks) == len(blocks), "a shell block with curl that is not marked runnable"
    for block in blocks:
        assert any(step.expected for step in block), f"a runnable block shows no output (line {block[0].line})"
    for documented in substitutions(Stack(url="", data_dir=Path(), database=Path(), logs=Path())):
        assert documented in text, f"the substitution {documented!r} no longer appears in the doc"


@pytest.mark.parametrize(
    ("documented", "output", "problem"),
    [
        ('{"a": 1, …} 400', '{"a": 1, "b": 2} 400', None),
        ('{"a": 1, …} 400', '{"a": 1, "b": 2} 409', "status: documented 400, got 409"),
        ('{"a": 1}', '{"a": 1, "b": 2}', "not documented"),
        ('{"a": "x … z"}', '{"a": "x y z"}', None),
        ('{"a": "x … z"}', '{"a": "x y"}', "does not read"),
        ('{"id": 2, "n": 3}', '{"id": 9, "n": 3}', "documented 2, got 9"),
        ('{"id": 2, "n": 3}', '{"id": 2, "n": 4}', "documented 3, got 4"),
        ('{"l": ["a", …]}', '{"l": ["a", "b"]}', None),
        ('{"l": ["a"]}', '{"l": ["a", "b"]}', "documented 1 items"),
    ],
)
def test_documented_outputs_are_compared_strictly_where_they_are_not_elided(
    documented: str, output: str, problem: str | None
) -> None:
    found = compare(documented, output)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_the_shell_reports_a_failing_command_and_an_unexpected_output(fresh: Stack) -> None:
    """What the curl test sees of a broken command: a 401 instead of the documented list, a failed pipeline."""
    with tempfile.TemporaryDirectory(prefix="aegis-first-hour-") as cwd:
        shell = Shell(Path(cwd))
        try:
            status, output = shell.run(f"curl -s -w ' %{{http_code}}\\n' {fresh.url}/api/v1/jobs/")
            assert status == 0
            assert (
                compare('{"next": null, "previous": null, "results": […]} 200', output) is not None
            )  # 401 without a token
            status, _ = shell.run(
                "JOB=$(curl -s http://127.0.0.1:1/ | python3 -c 'import json,sys; json.load(sys.stdin)')"
            )
            assert status != 0
        finally:
            shell.close()
