"""Rate limits that cannot be walked around, against daphne as the web role runs it (issue 13, item 5).

The client address every limit keys on is the socket's peer; ``X-Forwarded-For``
and ``X-Forwarded-Proto`` count only when that peer is in ``TRUSTED_PROXIES``.
Loopback has many addresses: requests from 127.0.0.1 play a client that reaches
daphne directly, requests from 127.0.0.2 (the configured proxy) play nginx.
Each test lowers a limit through the environment so that a few requests reach it.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.contrib.auth.models import User

from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent
from tests.roles import Roles

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

DIRECT = "127.0.0.1"  # a client that reaches daphne itself
PROXY = "127.0.0.2"  # the reverse proxy named in TRUSTED_PROXIES


class Web:
    """One daphne process; ``send`` speaks HTTP/1.1 from a chosen loopback address."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        parts = urlsplit(roles.web_url)
        self.host, self.port = parts.hostname or DIRECT, parts.port or 80
        self.cookies: dict[str, str] = {}

    def send(
        self,
        method: str,
        path: str,
        *,
        source: str = DIRECT,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
    ) -> tuple[int, str, http.client.HTTPResponse]:
        all_headers = {"Accept": "application/json", **(headers or {})}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        if form is not None:
            body = urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=(source, 0))
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, text, response

    def status(self, method: str, path: str, **kwargs: Any) -> int:
        return self.send(method, path, **kwargs)[0]

    def log(self) -> str:
        return self.roles.log("web")


@pytest.fixture
def start_web(transactional_db: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Roles] = []

    def start(**env: str) -> Web:
        roles = Roles(tmp_path / f"web{len(started)}")
        roles.data_dir.mkdir()
        started.append(roles)
        roles.web(**env)
        return Web(roles)

    yield start
    for roles in started:
        roles.stop()


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def enrol(web: Web, **kwargs: Any) -> int:
    body = {"enrolment_token": "aen_" + uuid.uuid4().hex, "agent_id": "intruder"}
    return web.status("POST", "/api/v1/agent/enrol/", json_body=body, **kwargs)


def test_rotating_x_forwarded_for_from_a_direct_client_does_not_reset_the_enrolment_or_auth_limits(start_web):
    web = start_web(API_THROTTLE_ENROL="3/min", API_THROTTLE_AUTH="3/min", TRUSTED_PROXIES=f"{PROXY}/32")

    enrolments = [enrol(web, headers=forwarded(f"198.51.100.{n}")) for n in range(5)]
    assert enrolments == [403, 403, 403, 429, 429]

    refreshes = [
        web.status(
            "POST", "/api/v1/auth/token/refresh/", json_body={"refresh": "a.b.c"}, headers=forwarded(f"203.0.113.{n}")
        )
        for n in range(5)
    ]
    assert refreshes == [401, 401, 401, 429, 429]
    assert "rate_limit" in web.log()
    assert "client=198.51.100." not in web.log()
    assert "client=203.0.113." not in web.log()


def test_a_trusted_proxy_s_forwarded_address_is_the_client(start_web):
    web = start_web(API_THROTTLE_ENROL="3/min", API_THROTTLE_AUTH_FAILURES="100/min", TRUSTED_PROXIES=f"{PROXY}/32")

    # Through the proxy each client has its own budget ...
    assert [enrol(web, source=PROXY, headers=forwarded(f"198.51.100.{n}")) for n in range(5)] == [403] * 5
    # ... and one client behind it has one budget, whatever else it put in the header (nginx appends to none).
    same_client = [enrol(web, source=PROXY, headers=forwarded(f"10.9.9.{n}, 198.51.100.77")) for n in range(4)]
    assert same_client == [403, 403, 403, 429]

    # The logs name the forwarded client, not the proxy (daphne logs before it answers) ...
    web.send("GET", "/api/v1/agent/me/", source=PROXY, headers={**forwarded("198.51.100.88"), **bearer("aeg_nope")})
    assert re.search(r"auth_failed .*client=198\.51\.100\.88", web.log())
    # ... but a direct client's header is ignored: its own address is logged.
    web.send("GET", "/api/v1/agent/me/", headers={**forwarded("198.51.100.99"), **bearer("aeg_nope")})
    assert re.search(r"auth_failed .*client=127\.0\.0\.1", web.log())
    assert "198.51.100.99" not in web.log()


def test_the_scheme_comes_from_a_trusted_proxy_only(start_web):
    web = start_web(HTTPS_ONLY="1", TRUSTED_PROXIES=f"{PROXY}/32")
    https = {"X-Forwarded-Proto": "https"}
    assert web.status("GET", "/admin/login/", source=PROXY, headers=https) == 200
    assert web.status("GET", "/admin/login/", source=PROXY) == 301  # the proxy saw plain HTTP
    assert web.status("GET", "/admin/login/", headers=https) == 301  # a direct client's claim is not believed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_bad_token_flood_answers_429_past_the_limit_and_a_real_agent_elsewhere_still_works(start_web):
    Agent.objects.create(pk="real-1", max_concurrency=1)
    _credential, real_token = registry_actions.issue_token("real-1", Actor("tester"))
    web = start_web(API_THROTTLE_AUTH_FAILURES="4/min", TRUSTED_PROXIES=f"{PROXY}/32")

    flood = [
        web.status(
            "GET",
            "/api/v1/agent/me/",
            headers={**bearer("aeg_" + uuid.uuid4().hex), **forwarded(f"198.51.100.{n}")},
        )
        for n in range(6)
    ]
    assert flood == [401, 401, 401, 401, 429, 429]
    # Every kind of credential counts against the same address: a forged JWT, an operator token.
    assert web.status("GET", "/api/v1/agent/me/", headers=bearer("eyJ.eyJ.sig")) == 429
    assert web.status("GET", "/api/v1/jobs/", headers=bearer("aeo_" + uuid.uuid4().hex)) == 429
    status, text, response = web.send("GET", "/api/v1/agent/me/", headers=bearer("aeg_" + uuid.uuid4().hex))
    assert json.loads(text)["error"]["code"] == "throttled"
    assert int(response.headers["Retry-After"]) <= 60

    # The limit is the attacker's address, not the agent it guessed at: the agent, elsewhere, is served.
    status, text, _ = web.send("GET", "/api/v1/agent/me/", source=PROXY, headers=bearer(real_token))
    assert status == 200, text
    assert json.loads(text)["id"] == "real-1"
    log = web.log()
    assert log.count("auth_failed") == 4
    assert "rate_limit" in log


def admin_login(web: Web, username: str, password: str, **kwargs: Any) -> int:
    web.cookies.clear()
    web.send("GET", "/admin/login/", **kwargs)
    form = {
        "csrfmiddlewaretoken": web.cookies["csrftoken"],
        "username": username,
        "password": password,
        "next": "/admin/",
    }
    return web.status("POST", "/admin/login/?next=/admin/", form=form, **kwargs)


def test_admin_login_through_daphne_locks_out_a_user_and_an_address(start_web):
    User.objects.create_user("alice", password="alice-right-pw-93", is_staff=True)
    User.objects.create_user("bob", password="bob-right-pw-93", is_staff=True)
    web = start_web(LOGIN_FAILURE_LIMIT="3", TRUSTED_PROXIES=f"{PROXY}/32")

    # Three wrong passwords from a client that reaches daphne directly, each with another X-Forwarded-For.
    wrong = [admin_login(web, "alice", "guess", headers=forwarded(f"198.51.100.{n}")) for n in range(3)]
    assert wrong == [200, 200, 429]  # the form again, then the lockout
    # alice is locked out wherever she comes from, even with her password ...
    assert admin_login(web, "alice", "alice-right-pw-93", source=PROXY, headers=forwarded("192.0.2.10")) == 429
    # ... and so is the attacker's address, whatever user it tries next.
    assert admin_login(web, "bob", "bob-right-pw-93", headers=forwarded("192.0.2.11")) == 429
    # bob from elsewhere (through the proxy) logs in.
    assert admin_login(web, "bob", "bob-right-pw-93", source=PROXY, headers=forwarded("192.0.2.12")) == 302
    log = web.log()
    assert log.count("auth_failed") == 3
    assert re.search(r"rate_limit .*username=alice", log)
