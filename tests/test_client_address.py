"""Which hop of ``X-Forwarded-For`` is the client, and what an untrusted peer's headers change (nothing)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aegis_site.client_address import TrustedProxyHeaders, forwarded_client

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _proxies(settings: Any) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/24", "2001:db8::/64"]


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # a direct client: its header is ignored
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),  # nginx, which overwrites the header
        ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # an appending proxy: the client's own part is left
        ("10.0.0.5", "198.51.100.1, 10.0.0.7", "198.51.100.1"),  # two trusted proxies in a row
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),  # only proxies: the farthest one
        ("10.0.0.5", "198.51.100.1:4711", "198.51.100.1"),  # with a port
        ("2001:db8::2", "[2001:db8:1::9]:443", "2001:db8:1::9"),
        ("10.0.0.5", "not-an-address", "10.0.0.5"),  # garbage: the proxy itself, not the garbage
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_the_client_is_the_right_most_hop_that_is_not_a_trusted_proxy(peer, header, client):
    assert forwarded_client(peer, [header]) == client


def rewritten(scope: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    asyncio.run(TrustedProxyHeaders(app)(scope, None, None))
    return seen


def http_scope(peer: str, **headers: str) -> dict[str, Any]:
    encoded = [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "scheme": "http", "client": (peer, 5555), "headers": encoded}


def test_the_asgi_scope_takes_address_and_scheme_from_a_trusted_proxy_only():
    trusted = rewritten(http_scope("10.0.0.5", X_Forwarded_For="198.51.100.1", X_Forwarded_Proto="https"))
    assert (trusted["client"][0], trusted["scheme"]) == ("198.51.100.1", "https")
    direct = rewritten(http_scope("203.0.113.9", X_Forwarded_For="198.51.100.1", X_Forwarded_Proto="https"))
    assert (direct["client"][0], direct["scheme"]) == ("203.0.113.9", "http")
    socket = rewritten({**http_scope("10.0.0.5", X_Forwarded_Proto="https"), "type": "websocket", "scheme": "ws"})
    assert socket["scheme"] == "wss"


def test_a_bad_trusted_proxies_value_stops_the_start(tmp_path):
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "aegis_site.settings", "TRUSTED_PROXIES": "nginx"}
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env | {"DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "TRUSTED_PROXIES: 'nginx' is not an address or a network" in run.stderr
