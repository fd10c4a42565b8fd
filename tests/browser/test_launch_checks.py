"""The job form catches what would certainly go wrong (issue 15 item 1), in a real browser against the real stack.

The demo's simulated agents run echo, noop and sleep: a ``reboot`` to them is
warned in the preview and refused on Launch; an untargeted job needs the
"Target every agent of the fleet" box; a target that matches no agent is refused.
Each test reads what the operator sees and checks the database wrote nothing it
should not have.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot
from tests.browser.stack import AGENT_PREFIX, AGENTS, Stack
from tests.browser.test_admin_browser import fill_job_form, launch, open_job_form

AGENT_IDS = [f"{AGENT_PREFIX}{i}" for i in range(AGENTS)]


def jobs(stack: Stack) -> int:
    return int(stack.scalar("SELECT COUNT(*) FROM jobs"))


def test_a_kind_the_demo_agents_do_not_run_is_warned_in_the_preview_and_refused_on_launch(
    stack: Stack, admin_page: Page
) -> None:
    page = admin_page
    before = jobs(stack)
    open_job_form(stack, page)
    fill_job_form(page, "reboot", "{}", agent_ids=" ".join(AGENT_IDS))
    page.click("[name=_preview]")

    warning = page.locator("#job-preview-warnings li[data-code=kind_not_offered]")
    expect(warning).to_contain_text(
        f"{AGENTS} of the {AGENTS} matching agents do not offer the kind 'reboot' (it is not among their "
        f"capabilities): their tasks will fail: {', '.join(AGENT_IDS)}."
    )
    expect(page.locator("#job-checks")).to_contain_text("Launch although agents do not offer the kind")
    screenshot(page, "launch-checks-kind-preview")

    page.click("[name=_launch]")
    expect(page.locator(".errornote")).to_contain_text("Nothing was launched.")
    expect(page.locator(".field-allow_unsupported_kind .errorlist")).to_contain_text("do not offer the kind 'reboot'")
    assert "/admin/tasks/job/add/" in page.url
    assert jobs(stack) == before, "a refused launch must not write a job"
    screenshot(page, "launch-checks-kind-refused")


def test_an_untargeted_job_needs_the_fleet_checkbox(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    before = jobs(stack)
    open_job_form(stack, page)
    fill_job_form(page, "echo", '{"say": "everyone"}')
    page.click("[name=_launch]")

    expect(page.locator(".field-target_all .errorlist")).to_contain_text(
        "The job has no target (no agent ids, labels or capabilities): it would go to every agent of the fleet."
    )
    assert jobs(stack) == before
    screenshot(page, "launch-checks-untargeted-refused")

    page.check("#id_target_all")
    page.click("[name=_preview]")
    expect(page.locator("#job-preview-fleet")).to_have_text(f"Target: every agent of the fleet ({AGENTS}).")
    expect(page.locator("#id_target_all")).to_be_checked()
    screenshot(page, "launch-checks-fleet-preview")

    job_id = launch(page)
    assert stack.scalar("SELECT target_all FROM jobs WHERE id = ?", (job_id,)) in (1, True)
    assert stack.scalar("SELECT tasks_total FROM jobs WHERE id = ?", (job_id,)) == AGENTS


def test_a_target_that_matches_no_agent_is_refused(stack: Stack, admin_page: Page) -> None:
    page = admin_page
    before = jobs(stack)
    open_job_form(stack, page)
    fill_job_form(page, "echo", "{}", label=("role", "nowhere"))
    page.click("[name=_preview]")

    expect(page.locator("#job-preview-warnings li[data-code=no_matching_agent]")).to_have_text(
        'The target matches no agent: labels {"role": "nowhere"}. The job would have no tasks.'
    )
    page.click("[name=_launch]")
    expect(page.locator(".field-allow_no_agents .errorlist")).to_contain_text(
        'The target matches no agent: labels {"role": "nowhere"}.'
    )
    expect(page.locator("#job-checks")).to_contain_text("Launch although no agent matches")
    assert re.search(r"/admin/tasks/job/add/", page.url)
    assert jobs(stack) == before
    screenshot(page, "launch-checks-no-agent-refused")
