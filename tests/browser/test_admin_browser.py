"""The operator's admin in a real browser against the real control plane (issue 6 acceptance).

The stack is ``manage.py run_all`` with three simulated agents; these tests
drive Debian's headless chromium through Playwright and check what the pages
show against the stack's database. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import re
import threading

from playwright.sync_api import BrowserContext, Page, Route, expect

from tests.browser.chromium import REQUIRED_FLAGS
from tests.browser.conftest import log_in, screenshot
from tests.browser.stack import AGENT_PREFIX, AGENTS, Stack
from tests.support import wait_for

AGENT_IDS = [f"{AGENT_PREFIX}{i}" for i in range(AGENTS)]


def test_chromium_runs_headless_with_the_offline_flags_and_a_fresh_profile(page: Page) -> None:
    page.goto("chrome://version")
    command_line = page.locator("#command_line").inner_text()
    for flag in REQUIRED_FLAGS:
        assert re.search(rf"(^|\s){re.escape(flag)}(\s|=|$)", command_line), f"{flag} missing from {command_line}"
    profile = re.search(r"--user-data-dir=(\S+)", command_line)
    assert profile, command_line
    assert "aegis-chromium-profile-" in profile.group(1), command_line


def test_login_form_refuses_a_wrong_password_and_lets_the_admin_in(
    stack: Stack, browser_context: BrowserContext, page: Page
) -> None:
    browser_context.clear_cookies()
    log_in(page, stack, password="not-" + stack.password)
    expect(page.locator(".errornote")).to_be_visible()
    assert "/admin/login/" in page.url

    log_in(page, stack)
    page.wait_for_url(f"{stack.url}/admin/")
    expect(page.locator("#user-tools")).to_contain_text(stack.username)
    assert stack.scalar("SELECT last_login IS NOT NULL FROM auth_user WHERE username = ?", (stack.username,)) == 1


def tile(page: Page, section: str, count: str) -> str:
    return page.locator(f"#{section} [data-count={count}] .n").inner_text().strip()


def test_dashboard_shows_the_fleet_and_a_healthy_control_plane(stack: Stack, admin_page: Page) -> None:
    admin_page.goto(f"{stack.url}/admin/")
    expect(admin_page.locator("#dash-agents [data-count=online] .n")).to_have_text(str(AGENTS))
    assert tile(admin_page, "dash-agents", "offline") == "0"
    assert tile(admin_page, "dash-queue", "queued") == "0"
    for role in ("broker", "bridge", "dispatcher"):
        # Roles report a heartbeat row after start-up: give them a few seconds, live.
        expect(admin_page.locator(f"#dash-health li[data-role={role}]")).to_have_class("good", timeout=30_000)
    expect(admin_page.locator("#live-status")).to_have_attribute("data-state", "connected")
    screenshot(admin_page, "dashboard")


def test_agent_list_shows_the_three_simulated_agents_online(stack: Stack, admin_page: Page) -> None:
    admin_page.goto(f"{stack.url}/admin/registry/agent/")
    for agent_id in AGENT_IDS:
        row = admin_page.locator("#result_list tbody tr", has_text=agent_id)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(re.compile("online", re.IGNORECASE))
    online = stack.query("SELECT id FROM agents WHERE connectivity = 'online' ORDER BY id")
    assert [agent_id for (agent_id,) in online] == AGENT_IDS
    screenshot(admin_page, "agent-list")


# --- the operator's scenario: launch a job, watch it live, cancel a task, drain an agent -----------------------------


def open_job_form(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.url}/admin/tasks/job/")
    page.locator(".object-tools a.addlink").click()
    page.wait_for_url(re.compile(r"/admin/tasks/job/add/"))


def fill_job_form(
    page: Page, kind: str, payload: str, *, agent_ids: str = "", label: tuple[str, str] = ("", "")
) -> None:
    page.fill("#id_kind", kind)
    page.fill("#id_payload", payload)
    if agent_ids:
        page.fill("#id_target_agent_ids", agent_ids)
    if label[0]:
        page.fill("#id_labels-0-key", label[0])
        page.fill("#id_labels-0-value", label[1])


def launch(page: Page) -> int:
    """Press Launch; the id of the job page the admin lands on."""
    page.click("[name=_launch]")
    page.wait_for_url(re.compile(r"/admin/tasks/job/\d+/change/"))
    found = re.search(r"/job/(\d+)/change/", page.url)
    assert found, page.url
    return int(found.group(1))


def watch_live(page: Page) -> None:
    """Mark the page and count live swaps: a reload would lose both."""
    page.evaluate(
        """() => {
            window.__marker = 1;
            window.__swaps = 0;
            document.addEventListener("aegis:live-updated", () => { window.__swaps += 1; });
        }"""
    )


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__marker") == 1, "the page was reloaded: live updates must swap regions in place"
    assert page.evaluate("window.__swaps") > 0, "no region was swapped by a live update"


def test_job_created_with_preview_completes_live_on_its_page(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    jobs_before = stack.scalar("SELECT COUNT(*) FROM jobs")
    open_job_form(stack, page)
    fill_job_form(page, "sleep", '{"seconds": 4}', label=("simulated", "true"))
    page.click("[name=_preview]")

    preview = page.locator("#job-preview")
    expect(preview.locator("#job-preview-agent-count")).to_have_text(str(AGENTS))
    expect(preview.locator("#job-preview-task-count")).to_have_text(str(AGENTS))
    listed = preview.locator("#job-preview-agents li").evaluate_all("items => items.map(li => li.dataset.agent)")
    assert sorted(listed) == AGENT_IDS
    assert stack.scalar("SELECT COUNT(*) FROM jobs") == jobs_before, "a preview must not write a job"
    screenshot(page, "job-preview")

    # The preview keeps what was typed: launching submits the same form.
    expect(page.locator("#id_kind")).to_have_value("sleep")
    job_id = launch(page)
    watch_live(page)
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    # Each task sleeps 4 s: when the page first rendered, the job was not done yet.
    assert page.locator("#job-count-succeeded").inner_text().strip() != str(AGENTS)

    expect(page.locator("#job-count-succeeded")).to_have_text(str(AGENTS), timeout=30_000)
    expect(page.locator("#job-progress")).to_contain_text(f"{AGENTS} of {AGENTS} tasks finished")
    expect(page.locator("#job-tasks .job-badge-succeeded")).to_have_count(AGENTS)
    assert_not_reloaded(page)
    screenshot(page, "job-detail")

    rows = stack.query("SELECT state, agent_id FROM tasks WHERE job_id = ? ORDER BY agent_id", (job_id,))
    assert rows == [("succeeded", agent_id) for agent_id in AGENT_IDS]
    assert stack.scalar("SELECT state FROM jobs WHERE id = ?", (job_id,)) == "succeeded"


def test_running_task_is_canceled_from_its_page(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    open_job_form(stack, page)
    fill_job_form(page, "sleep", '{"seconds": 120}', agent_ids=AGENT_IDS[0])
    job_id = launch(page)
    running = page.locator("#job-tasks .job-badge-running")
    expect(running).to_have_count(1, timeout=20_000)  # live: assigned, then accepted by the agent

    task_id = stack.scalar("SELECT id FROM tasks WHERE job_id = ?", (job_id,))
    page.locator("#job-tasks").get_by_role("link", name=str(task_id), exact=True).click()
    page.wait_for_url(re.compile(rf"/admin/tasks/task/{task_id}/change/"))
    expect(page.locator("#task-state")).to_have_text("running")
    expect(page.locator("#task-timeline")).to_contain_text("accepted")
    screenshot(page, "task-detail")

    page.click("#task-controls [name=_cancel]")
    expect(page.locator("#task-state")).to_have_text("canceled", timeout=20_000)
    assert stack.scalar("SELECT state FROM tasks WHERE id = ?", (task_id,)) == "canceled"
    audited = "SELECT actor_label FROM audit_events WHERE action = 'task.cancel' AND object_id = ?"
    assert stack.scalar(audited, (str(task_id),)) == stack.username, "the cancel was not audited as the operator's"
    screenshot(page, "task-detail-canceled")


def test_job_page_catches_up_with_a_change_made_before_its_socket_opened(stack: Stack, admin_page: Page) -> None:
    """A page is rendered, its task starts, and only then does the live socket open: the page must still follow.

    The gap is real (render, then the agent accepts within the dispatcher's next
    poll, then the script connects); holding back live.js until the task runs
    makes it wide enough to hit on every run.
    """
    page = admin_page
    open_job_form(stack, page)
    fill_job_form(page, "sleep", '{"seconds": 120}', agent_ids=AGENT_IDS[1])
    job_id = stack.scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs")

    released = threading.Event()

    def hold_until_running(route: Route) -> None:
        # Always let the script through: a route left pending (the wait raising on a loaded machine)
        # hung the page, and page.close() with it, until pytest-timeout ended the run. Once the test
        # has seen the catch-up, a later request for the script (the page reloaded after the cancel,
        # the task no longer running) must not wait either: page.close() waits for running handlers.
        try:
            wait_for(
                lambda: (
                    released.is_set()
                    or stack.scalar("SELECT state FROM tasks WHERE job_id = ?", (job_id,)) == "running"
                ),
                "the task to start",
                timeout=120,
            )
        finally:
            route.continue_()

    page.route("**/static/aegis/live.js", hold_until_running)
    assert launch(page) == job_id
    watch_live(page)
    # Nothing changes after this: the task sleeps for two minutes. Only a catch-up shows it running.
    expect(page.locator("#job-tasks .job-badge-running")).to_have_count(1, timeout=30_000)
    released.set()
    page.unroute("**/static/aegis/live.js")

    page.click("#job-cancel")
    wait_for(lambda: stack.scalar("SELECT state FROM jobs WHERE id = ?", (job_id,)) == "canceled", "the job to cancel")


def test_draining_an_agent_changes_its_badge_and_the_open_dashboard(
    stack: Stack, admin_page: Page, browser_context: BrowserContext
) -> None:
    dashboard = browser_context.new_page()
    dashboard.goto(f"{stack.url}/admin/")
    watch_live(dashboard)
    assert tile(dashboard, "dash-agents", "draining") == "0"

    page = admin_page
    agent_id = AGENT_IDS[-1]
    page.goto(f"{stack.url}/admin/registry/agent/{agent_id}/change/")
    expect(page.locator("#agent-detail .aegis-badge", has_text="active")).to_have_count(1)
    page.click("#agent-actions button[name=operation][value=drain]")

    expect(page.locator("#agent-detail .aegis-badge", has_text="draining")).to_have_count(1)
    assert stack.scalar("SELECT admin_state FROM agents WHERE id = ?", (agent_id,)) == "draining"
    last_audit = "SELECT action, actor_label FROM audit_events WHERE object_id = ? ORDER BY id DESC LIMIT 1"
    assert stack.query(last_audit, (agent_id,)) == [("agent.drain", stack.username)]

    # The dashboard left open in another tab follows without a reload.
    expect(dashboard.locator("#dash-agents [data-count=draining] .n")).to_have_text("1", timeout=10_000)
    assert_not_reloaded(dashboard)
    dashboard.close()

    page.goto(f"{stack.url}/admin/registry/agent/")
    row = page.locator("#result_list tbody tr", has_text=agent_id)
    expect(row.locator(".aegis-badge", has_text="draining")).to_have_count(1)
    screenshot(page, "agent-list-drained")


def test_dashboard_counts_match_the_database(stack: Stack, admin_page: Page) -> None:
    """After the scenario above: its succeeded, canceled and draining numbers, and its latest audit rows."""
    admin_page.goto(f"{stack.url}/admin/")
    finished = "SELECT COUNT(*) FROM tasks WHERE state = ?"
    assert int(tile(admin_page, "dash-throughput", "succeeded")) == stack.scalar(finished, ("succeeded",))
    assert int(tile(admin_page, "dash-throughput", "canceled")) == stack.scalar(finished, ("canceled",))
    draining = stack.scalar("SELECT COUNT(*) FROM agents WHERE admin_state = 'draining'")
    assert int(tile(admin_page, "dash-agents", "draining")) == draining
    latest = stack.query("SELECT id, action FROM audit_events ORDER BY id DESC LIMIT 3")
    for audit_id, action in latest:
        expect(admin_page.locator(f"#dash-audit li[data-audit='{audit_id}']")).to_contain_text(action)
    screenshot(admin_page, "dashboard-after")
