"""What an operator sees on the pages issue 15 changed (items 3, 4 and 7), in a real browser at 1440 px.

The same ``run_all`` stack as test_admin_browser.py (three simulated agents; ``sleep`` runs
``payload.seconds`` without progress reports, ``echo`` answers with its payload). A job of
long sleeps with a 1 s execution timeout times out for real. Each test asserts the words,
states and positions on the page and leaves a screenshot in test-artifacts/browser/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from playwright.sync_api import BrowserContext, Page, WebSocketRoute, expect

from tests.browser.conftest import screenshot
from tests.browser.stack import AGENT_PREFIX, REPO, Stack, stack_env
from tests.browser.test_admin_browser import fill_job_form, launch, open_job_form
from tests.support import wait_for

EXACT_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def job_state(stack: Stack, job_id: int) -> str:
    return str(stack.scalar("SELECT state FROM jobs WHERE id = ?", (job_id,)))


def in_stack(stack: Stack, code: str) -> None:
    """Run Python in the stack's own Django (its database): what an operator's shell on that host would do."""
    env = stack_env(stack.data_dir, mqtt_port=1)  # no broker needed: database writes only
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "-c", code],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def launch_job(page: Page, stack: Stack, kind: str, payload: object, agents: list[str], **policy: str) -> int:
    open_job_form(stack, page)
    fill_job_form(page, kind, json.dumps(payload), agent_ids=", ".join(agents))
    for field, value in policy.items():
        page.fill(f"#id_{field}", value)
    return launch(page)


# --- item 3: one vocabulary ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timed_out_job(stack: Stack, browser_context: BrowserContext, logged_in: None) -> int:
    """Two sleeps of a minute with a 1 s execution timeout and two attempts each: both time out twice."""
    page = browser_context.new_page()
    agents = [f"{AGENT_PREFIX}0", f"{AGENT_PREFIX}1"]
    job_id = launch_job(
        page,
        stack,
        "sleep",
        {"seconds": 60},
        agents,
        max_attempts="2",
        backoff_base_s="0.5",
        backoff_cap_s="1",
        execution_timeout_s="1",
    )
    page.close()
    wait_for(lambda: job_state(stack, job_id) == "failed", f"job {job_id} to fail", timeout=90, interval=0.3)
    return job_id


def test_a_timed_out_job_reads_the_same_on_its_page(stack: Stack, admin_page: Page, timed_out_job: int) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/tasks/job/{timed_out_job}/change/")

    expect(page.locator("#job-state")).to_have_text("failed")
    expect(page.locator("#job-outcome")).to_have_text(
        "2 of 2 tasks finished: 0 succeeded, 2 failed (2 timed out), 0 canceled"
    )
    expect(page.locator("#job-count-failed-total")).to_have_text("failed: 2")
    expect(page.locator("#job-count-failed")).to_have_text("0")
    expect(page.locator("#job-count-timed_out")).to_have_text("2")
    badges = page.locator("#job-task-table .job-badge")
    expect(badges).to_have_text(["timed out", "timed out"])
    expect(page.locator("#job-failures")).to_contain_text("timed out")
    expect(page.locator("#job-failures")).to_contain_text("execution_timeout")
    expect(page.locator(".job-legend")).to_contain_text("failed (error or timed out)")
    assert "timed_out" not in page.locator("#content").inner_text()
    assert "Timed Out" not in page.locator("#content").inner_text()
    screenshot(page, "operator-job-timed-out")

    # The job list says the same.
    page.goto(f"{stack.url}/admin/tasks/job/")
    assert_not_clipped(page)
    row = page.locator("#result_list tbody tr", has=page.locator(f"a[href$='/job/{timed_out_job}/change/']"))
    expect(row.locator(".job-badge")).to_have_text("failed")
    expect(row).to_contain_text("2/2 finished, 2 failed (2 timed out)")
    screenshot(page, "operator-job-list")


def test_the_task_state_filter_says_timed_out_and_lists_those_tasks(
    stack: Stack, admin_page: Page, timed_out_job: int
) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/tasks/task/?job={timed_out_job}")
    state_filter = page.locator("#changelist-filter")
    expect(state_filter.get_by_role("link", name="timed out", exact=True)).to_have_count(1)
    assert "Timed Out" not in state_filter.inner_text()

    state_filter.get_by_role("link", name="timed out", exact=True).click()
    page.wait_for_url(re.compile(r"state__exact=timed_out"))
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list tbody .task-badge")).to_have_text(["timed out", "timed out"])
    screenshot(page, "operator-task-list-timed-out")


def test_the_dashboard_counts_timed_out_tasks_as_failed_and_says_so(
    stack: Stack, admin_page: Page, timed_out_job: int
) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/")
    failed = page.locator("#dash-throughput [data-count=failed]")
    timed_out = stack.scalar("SELECT COUNT(*) FROM tasks WHERE state = 'timed_out'")
    both = stack.scalar("SELECT COUNT(*) FROM tasks WHERE state IN ('failed', 'timed_out')")
    expect(failed.locator(".n")).to_have_text(str(both))
    expect(failed.locator(".l")).to_have_text(f"failed ({timed_out} timed out)")
    expect(page.locator("#dash-throughput .aegis-legend")).to_contain_text("failed (error or timed out)")
    screenshot(page, "operator-dashboard-failed")

    failed.click()
    page.wait_for_url(re.compile(r"/admin/tasks/task/\?state__in="))
    states = page.locator("#result_list tbody .task-badge").all_inner_texts()
    assert len(states) == both, states
    assert set(states) <= {"failed", "timed out"}, states


# --- item 4: what task rows show, times with seconds, explain --------------------------------------------------------


def test_task_rows_show_attempt_reason_duration_and_error(stack: Stack, admin_page: Page, timed_out_job: int) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/tasks/job/{timed_out_job}/change/")
    rows = page.locator("#job-task-table tbody tr")
    expect(rows).to_have_count(2)
    for index in range(2):
        row = rows.nth(index)
        expect(row.locator(".task-attempt")).to_have_text("2/2")
        expect(row.locator(".task-attempt-reason")).to_have_text("retried after execution timeout")
        expect(row.locator(".task-duration")).to_have_text(re.compile(r"^waited \d+\.\d s, ran \d+\.\d s$"))
        expect(row.locator(".task-outcome-error")).to_have_text("execution_timeout: lease expired")
        assert EXACT_TIME.fullmatch(row.locator("td").last.inner_text().strip())

    page.goto(f"{stack.url}/admin/tasks/task/?job={timed_out_job}")
    assert_not_clipped(page)
    first = page.locator("#result_list tbody tr").first
    expect(first.locator(".task-attempt-reason")).to_have_text("retried after execution timeout")
    expect(first.locator("td.field-duration_column")).to_have_text(re.compile(r"^waited .* s, ran .* s$"))
    age = first.locator("td.field-age_column time")
    assert EXACT_TIME.fullmatch(age.get_attribute("title") or ""), age.get_attribute("title")
    screenshot(page, "operator-task-list-columns")


def test_a_result_is_summarised_in_the_row_and_whole_on_hover(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    payload = {"message": "hello " * 30}
    job_id = launch_job(page, stack, "echo", payload, [f"{AGENT_PREFIX}0"])
    wait_for(lambda: job_state(stack, job_id) == "succeeded", f"job {job_id} to succeed", timeout=30, interval=0.2)

    page.goto(f"{stack.url}/admin/tasks/task/?job={job_id}")
    outcome = page.locator("#result_list tbody tr .task-outcome-result")
    expect(outcome).to_have_count(1)
    shown = outcome.inner_text()
    assert shown.startswith('{"message": "hello hello'), shown
    assert shown.endswith("…"), shown
    assert len(shown) <= 60, shown
    assert json.loads(outcome.get_attribute("title") or "") == payload  # the whole result, on hover
    expect(page.locator("#result_list tbody tr .task-attempt-reason")).to_have_text("first attempt")
    expect(page.locator("#result_list tbody tr td.field-duration_column")).to_have_text(
        re.compile(r"^waited \d+\.\d s, ran \d+\.\d s$")
    )
    screenshot(page, "operator-task-result")


def test_explain_says_the_holding_agent_is_offline_and_what_happens_next(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    agent_id = f"{AGENT_PREFIX}1"
    job_id = launch_job(page, stack, "sleep", {"seconds": 300}, [agent_id], max_attempts="3")
    wait_for(lambda: stack.scalar("SELECT state FROM tasks WHERE job_id = ?", (job_id,)) == "running", "the task runs")
    task_id = stack.scalar("SELECT id FROM tasks WHERE job_id = ?", (job_id,))
    # The agent's connection drops silently (as a dead network would): the registry marks it offline.
    in_stack(stack, f"from registry import actions; actions.mark_offline({agent_id!r}, 'network gone (test)')")
    try:
        page.goto(f"{stack.url}/admin/tasks/task/{task_id}/change/")
        explain = page.locator("#task-explain")
        expect(explain).to_have_attribute("data-code", "held_by_offline_agent")
        expect(explain).to_contain_text(
            f"running on agent {agent_id} (attempt 1 of 3): agent {agent_id} is offline since"
        )
        expect(explain).to_contain_text("then the task is requeued (attempt 2 of 3)")
        expect(page.locator("#task-attempt-reason")).to_have_text("first attempt")
        screenshot(page, "operator-explain-offline")

        # The dashboard's reconciliation link now says how many tasks need a look.
        page.goto(f"{stack.url}/admin/")
        expect(page.locator("#dash-reconcile [data-count=stuck]")).to_have_text("1")
        expect(page.locator("#dash-reconcile")).to_contain_text("1 task whose state contradicts reality")
        screenshot(page, "operator-dashboard-reconcile")
    finally:
        in_stack(
            stack,
            f"from aegis_site.core.audit import Actor; from tasks import actions as t; "
            f"from registry import actions as r; "
            f"t.cancel_job({job_id}, Actor('test'), force=True); r.mark_online({agent_id!r})",
        )
    page.reload()
    expect(page.locator("#dash-reconcile")).to_contain_text("no task whose state contradicts reality")


# --- item 7: admin polish --------------------------------------------------------------------------------------------


def list_layout(page: Page) -> dict[str, object]:
    """The change list's geometry, read in one evaluation (a live swap of the table cannot fall between)."""
    return dict(
        page.evaluate(
            """() => {
                const box = (el) => el.getBoundingClientRect().toJSON();
                return {
                    table: box(document.getElementById("result_list")),
                    frame: box(document.querySelector("#changelist .results")),
                    cells: Array.from(document.querySelectorAll("#result_list tr > :last-child")).map(box),
                    idLines: Array.from(document.querySelectorAll("#result_list tbody th.field-id a")).map(
                        (a) => a.getClientRects().length),
                    width: document.documentElement.clientWidth,
                };
            }"""
        )
    )


def assert_not_clipped(page: Page) -> dict[str, object]:
    """At 1440 px, the list's last column ends inside its scroll frame: nothing hidden on the right."""
    expect(page.locator("#result_list")).to_be_visible()
    layout = list_layout(page)
    frame: dict[str, float] = layout["frame"]  # type: ignore[assignment]
    table: dict[str, float] = layout["table"]  # type: ignore[assignment]
    cells: list[dict[str, float]] = layout["cells"]  # type: ignore[assignment]
    assert layout["width"] == 1440, layout
    assert table["right"] <= frame["right"] + 0.5, layout
    assert all(cell["right"] <= frame["right"] + 0.5 for cell in cells), layout
    return layout


def test_agent_list_fits_1440_px_and_ids_stay_on_one_line(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/registry/agent/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    layout = assert_not_clipped(page)
    assert layout["idLines"] == [1, 1, 1], layout["idLines"]  # one line box each: no wrap
    screenshot(page, "operator-agent-list-1440")


@pytest.mark.parametrize(
    "path",
    ["/admin/tasks/job/", "/admin/tasks/task/", "/admin/tasks/taskevent/", "/admin/core/auditevent/"],
)
def test_the_other_lists_fit_1440_px_too(stack: Stack, admin_page: Page, timed_out_job: int, path: str) -> None:
    """After the scenario above each list has rows with long values (times to the second, errors, audit data)."""
    admin_page.goto(f"{stack.url}{path}")
    expect(admin_page.locator("#result_list tbody tr").first).to_be_visible()
    assert_not_clipped(admin_page)


def button_style(page: Page, selector: str) -> dict[str, str]:
    """The computed look of a button, read in one evaluation (a live swap may replace it between two)."""
    expect(page.locator(selector)).to_be_visible()
    return dict(
        page.evaluate(
            """(selector) => {
                const style = getComputedStyle(document.querySelector(selector));
                return {background: style.backgroundColor, border: style.borderTopStyle,
                        radius: style.borderTopLeftRadius, color: style.color, cursor: style.cursor};
            }""",
            selector,
        )
    )


BROWSER_DEFAULT_BUTTON = ("rgb(239, 239, 239)", "rgba(0, 0, 0, 0)")  # Chromium's grey, or nothing


def test_task_and_job_buttons_look_like_admin_buttons(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    job_id = launch_job(page, stack, "sleep", {"seconds": 120}, [f"{AGENT_PREFIX}0"])
    wait_for(lambda: stack.scalar("SELECT state FROM tasks WHERE job_id = ?", (job_id,)) == "running", "the task runs")
    page.reload()
    for button in ("#job-pause", "#job-cancel"):
        style = button_style(page, button)
        assert style["background"] not in BROWSER_DEFAULT_BUTTON, (button, style)
        assert (style["border"], style["cursor"]) == ("none", "pointer"), (button, style)
    screenshot(page, "operator-job-buttons")

    task_id = stack.scalar("SELECT id FROM tasks WHERE job_id = ?", (job_id,))
    page.goto(f"{stack.url}/admin/tasks/task/{task_id}/change/")
    for button in ("#task-cancel", "#task-force-cancel"):
        style = button_style(page, button)
        assert style["background"] not in BROWSER_DEFAULT_BUTTON, (button, style)
        assert (style["border"], style["radius"], style["color"]) == ("none", "4px", "rgb(255, 255, 255)"), style
    screenshot(page, "operator-task-buttons")
    page.click("#task-force-cancel")
    expect(page.locator("#task-state")).to_have_text("canceled", timeout=20_000)
    wait_for(lambda: job_state(stack, job_id) == "canceled", "the job of the canceled task to end")


def test_live_indicator_says_live_or_disconnected_in_words(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/")
    indicator = page.locator("#live-status")
    expect(indicator).to_have_attribute("data-state", "connected")
    expect(indicator).to_have_text("live")

    def refuse(ws: WebSocketRoute) -> None:
        ws.close(code=1011, reason="test: server gone")

    page.route_web_socket(re.compile(r"/ws/admin/live/"), refuse)
    page.reload()
    expect(indicator).to_have_attribute("data-state", "disconnected")
    expect(indicator).to_have_text("disconnected — retrying")
    assert indicator.evaluate("el => getComputedStyle(el, '::before').color") == "rgb(248, 81, 73)"  # red dot
    screenshot(page, "operator-live-disconnected")


def test_agent_page_offers_only_the_actions_that_change_something(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    agent_id = f"{AGENT_PREFIX}0"
    page.goto(f"{stack.url}/admin/registry/agent/{agent_id}/change/")
    buttons = page.locator("#agent-actions button[name=operation]")
    expect(page.locator("#agent-detail .aegis-badge", has_text="active")).to_have_count(1)
    expect(buttons).to_have_text(["Drain", "Disable", "Ping"])
    screenshot(page, "operator-agent-active-actions")

    page.click("#agent-actions button[value=drain]")
    expect(page.locator("#agent-detail .aegis-badge", has_text="draining")).to_have_count(1)
    expect(buttons).to_have_text(["Disable", "Enable", "Ping"])
    page.click("#agent-actions button[value=enable]")
    expect(page.locator("#agent-detail .aegis-badge", has_text="active")).to_have_count(1)
    expect(buttons).to_have_text(["Drain", "Disable", "Ping"])

    # The audit rows of those two clicks: JSON, not a Python repr.
    audit = page.locator(".aegis-json").first
    expect(audit).to_have_text('{\n  "previous": "draining"\n}')
    assert "'previous'" not in page.locator("#agent-detail").inner_text()
    screenshot(page, "operator-agent-audit-json")


def test_job_page_shows_progress_failures_and_tasks_before_the_policy(
    stack: Stack, admin_page: Page, timed_out_job: int
) -> None:
    page = admin_page
    page.goto(f"{stack.url}/admin/tasks/job/{timed_out_job}/change/")
    tasks = page.locator("#job-task-table").bounding_box()
    failures = page.locator("#job-failures").bounding_box()
    policy = page.locator("fieldset", has=page.get_by_role("heading", name="Policy", exact=True)).bounding_box()
    assert tasks
    assert failures
    assert policy
    assert failures["y"] < tasks["y"] < policy["y"], (failures, tasks, policy)
    assert tasks["y"] < 900, tasks  # on the first screen at 1440 x 900
    folded = page.locator("fieldset.collapse details").evaluate_all("all => all.map(d => d.open)")
    assert folded == [False, False], folded  # Policy and Rollout policy: folded until opened
    screenshot(page, "operator-job-layout")
