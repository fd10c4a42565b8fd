"""Password logins lock out per username and per client address; failed tokens count per address (issue 13, item 5).

The Django test client here; tests/test_rate_limits.py does the same through daphne.
The default limits (``LOGIN_FAILURE_LIMIT=5``, ``API_THROTTLE_AUTH_FAILURES=20/min``) apply.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent

pytestmark = pytest.mark.django_db

LIMIT = 5
PASSWORD = "a-right-password-93"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """The throttles count in the cache, which outlives the test's database transaction."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password=PASSWORD, is_staff=True)


def admin_login(username: str, password: str, address: str) -> int:
    answer = Client(REMOTE_ADDR=address).post(
        "/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"}
    )
    return answer.status_code


def api_login(username: str, password: str, address: str) -> Any:
    client = APIClient(REMOTE_ADDR=address)
    return client.post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_the_admin_login_locks_a_username_out_from_every_address(alice, caplog):
    wrong = [admin_login("alice", "guess", f"198.51.100.{n}") for n in range(LIMIT)]
    assert wrong == [200] * (LIMIT - 1) + [429]
    assert admin_login("alice", PASSWORD, "192.0.2.1") == 429  # her password, from a fresh address: still locked

    failed = events(caplog, "auth_failed")
    assert [(record.username, record.client) for record in failed] == [
        ("alice", f"198.51.100.{n}") for n in range(LIMIT)
    ]
    refused = events(caplog, "rate_limit")
    assert [(record.username, record.client) for record in refused] == [
        ("alice", f"198.51.100.{LIMIT - 1}"),
        ("alice", "192.0.2.1"),
    ]

    # docs/operations.md: how an operator unlocks a user.
    call_command("axes_reset_username", "alice")
    assert admin_login("alice", PASSWORD, "192.0.2.1") == 302


def test_the_admin_login_locks_an_address_out_whatever_usernames_it_tries(alice):
    wrong = [admin_login(f"user{n}", "guess", "203.0.113.7") for n in range(LIMIT)]
    assert wrong[-1] == 429
    assert admin_login("alice", PASSWORD, "203.0.113.7") == 429
    assert admin_login("alice", PASSWORD, "203.0.113.8") == 302  # alice herself is not locked
    call_command("axes_reset_ip", "203.0.113.7")
    assert admin_login("alice", PASSWORD, "203.0.113.7") == 302


def test_the_api_token_endpoint_shares_the_per_user_lockout(alice, caplog):
    for n in range(LIMIT):
        assert api_login("alice", "guess", f"198.51.100.{n}").status_code == 401
    # Locked by failures on the API: the admin form refuses her too, and so does the API.
    assert admin_login("alice", PASSWORD, "192.0.2.1") == 429
    answer = api_login("alice", PASSWORD, "192.0.2.2")
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "throttled"
    assert int(answer["Retry-After"]) > 0
    assert len(events(caplog, "auth_failed")) == LIMIT
    assert any(record.client == "192.0.2.2" for record in events(caplog, "rate_limit"))


def test_a_login_without_a_request_is_not_counted(alice):
    """``authenticate()`` from a shell or the test client's ``login()``: no address to count, no lockout."""
    for _ in range(LIMIT + 1):
        assert not Client().login(username="alice", password="guess")
    assert Client().login(username="alice", password=PASSWORD)


def test_failed_tokens_count_per_address_and_answer_429_past_the_limit(monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    # A budget of 3 so that the test stays short (the default is 20/min).
    monkeypatch.setattr(
        SimpleRateThrottle, "THROTTLE_RATES", {**SimpleRateThrottle.THROTTLE_RATES, "auth_failure": "3/min"}
    )
    Agent.objects.create(pk="real-1", max_concurrency=1)
    _credential, token = registry_actions.issue_token("real-1", Actor("tester"))
    attacker = APIClient(REMOTE_ADDR="203.0.113.66")

    def guess(credential: str) -> int:
        attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {credential}")
        return attacker.get("/api/v1/agent/me/").status_code

    assert [guess("aeg_" + uuid.uuid4().hex) for _ in range(4)] == [401, 401, 401, 429]
    assert guess("x.y.z") == 429  # a JWT, checked or not, is refused before it is looked at
    assert guess(token) == 429  # even a good token, from that address: it is not looked up either
    agent = APIClient(REMOTE_ADDR="192.0.2.40")
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert agent.get("/api/v1/agent/me/").status_code == 200  # the agent it guessed at is not locked out
