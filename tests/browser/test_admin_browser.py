"""The operator's admin in a real browser against the real control plane (issue 6 acceptance).

The stack is ``manage.py run_all`` with three simulated agents; these tests
drive Debian's headless chromium through Playwright and check what the pages
show against the stack's database. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import re

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.chromium import REQUIRED_FLAGS
from tests.browser.conftest import log_in, screenshot
from tests.browser.stack import AGENT_PREFIX, AGENTS, Stack

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


def test_dashboard_shows_the_fleet(stack: Stack, admin_page: Page) -> None:
    admin_page.goto(f"{stack.url}/admin/")
    expect(admin_page.locator("#content")).to_contain_text("Agents")
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
