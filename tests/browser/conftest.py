"""Fixtures of the browser tests: the real control plane, headless Chromium, a logged-in admin page.

Everything is package-scoped: one stack and one browser for all browser tests,
torn down when the last of them finished, before any other test of the run
(the Playwright sync API keeps an event loop that Django's ORM must not see).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from tests.browser.chromium import chromium_missing_reason, launch_options
from tests.browser.stack import REPO, Stack, running_stack

ARTIFACTS = REPO / "test-artifacts" / "browser"
TIMEOUT_MS = 15_000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Remember each phase's outcome on the item, so ``page`` can save a screenshot of a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ARTIFACTS.exists() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser test artifacts (screenshots, role logs): {ARTIFACTS}")


@pytest.fixture(scope="package")
def chromium() -> None:
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="package")
def artifacts() -> Path:
    """A fresh artifacts directory per run, so no screenshot of an earlier run passes for this one."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def stack(chromium: None, artifacts: Path) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="aegis-browser-") as tmp, running_stack(Path(tmp), artifacts) as running:
        yield running


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@contextmanager
def fresh_context(playwright: Playwright) -> Iterator[BrowserContext]:
    """Chromium with a profile of its own (cookies do not tell ports apart: each stack wants its own browser)."""
    with tempfile.TemporaryDirectory(prefix="aegis-chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(**launch_options(Path(profile)))
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@contextmanager
def kept_on_failure(request: pytest.FixtureRequest, context: BrowserContext, artifacts: Path) -> Iterator[Page]:
    """A new page of ``context``; when the test fails, its screenshot and HTML are kept in ``artifacts``."""
    page = context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        page.screenshot(path=artifacts / f"FAILED-{name}.png", full_page=True)
        (artifacts / f"FAILED-{name}.html").write_text(page.content())
    # page.close() waits for route handlers still running; a test's handler may be waiting on a state
    # that will not come now (CI hung here for pytest-timeout's 300 s once). Drop them without waiting.
    page.unroute_all(behavior="ignoreErrors")
    page.close()


@pytest.fixture(scope="package")
def browser_context(chromium: None, playwright: Playwright) -> Iterator[BrowserContext]:
    with fresh_context(playwright) as context:
        yield context


@pytest.fixture
def page(request: pytest.FixtureRequest, browser_context: BrowserContext, artifacts: Path) -> Iterator[Page]:
    with kept_on_failure(request, browser_context, artifacts) as page:
        yield page


def log_in(page: Page, stack: Stack, password: str | None = None) -> None:
    """Log in through the admin's login form, as an operator would."""
    page.goto(f"{stack.url}/admin/login/?next=/admin/")
    page.fill("#id_username", stack.username)
    page.fill("#id_password", stack.password if password is None else password)
    page.click("input[type=submit]")


@pytest.fixture(scope="package")
def logged_in(stack: Stack, browser_context: BrowserContext) -> None:
    """The session cookie of the shared context after a login through the form (unless a test logged in already)."""
    page = browser_context.new_page()
    page.goto(f"{stack.url}/admin/")
    if "/admin/login/" in page.url:
        log_in(page, stack)
        page.wait_for_url(f"{stack.url}/admin/")
    page.close()


@pytest.fixture
def admin_page(logged_in: None, page: Page) -> Page:
    return page


def screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path
