"""Who is asking: the socket's peer, or the client a trusted proxy says it forwarded.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are only a claim: anyone who reaches
daphne directly can send them. They are believed only when the connection comes
from an address in ``TRUSTED_PROXIES`` (empty by default: never). daphne's own
``--proxy-headers`` believes them from anyone, so the deployments do not use it;
``TrustedProxyHeaders`` wraps the ASGI application instead and rewrites the
scope's client and scheme once, so ``REMOTE_ADDR``, ``request.is_secure()``, the
throttles, the login lockout and the logs all see the same address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: Any) -> str:
    """The address every limit and log line keys on (already resolved by ``TrustedProxyHeaders``)."""
    return str(request.META.get("REMOTE_ADDR", ""))


@lru_cache(maxsize=8)
def _networks(configured: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in configured)


def _address(value: str) -> Address | None:
    """A bare address, or ``[v6]:port`` / ``v4:port`` as some proxies write it; ``None`` if it is neither."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def is_trusted_proxy(address: str) -> bool:
    parsed = _address(address)
    return parsed is not None and any(parsed in network for network in _networks(tuple(settings.TRUSTED_PROXIES)))


def forwarded_client(peer: str, forwarded_for: Iterable[str]) -> str:
    """The client behind a chain of proxies: the right-most ``X-Forwarded-For`` hop that is not a trusted proxy.

    Each trusted proxy appends the address it saw (or, like deploy/nginx, replaces
    the header with it); everything left of the first untrusted hop was written by
    the client and is ignored. A peer that is not a trusted proxy is the client.
    """
    if not is_trusted_proxy(peer):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # not an address: whoever wrote it is not to be believed; stop at the last proxy
            return client
        client = str(address)
        if not is_trusted_proxy(client):
            return client
    return client


class TrustedProxyHeaders:
    """ASGI middleware: the scope's client and scheme from ``X-Forwarded-For``/``-Proto`` of a trusted proxy only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        client = scope.get("client")
        if scope["type"] in {"http", "websocket"} and client and is_trusted_proxy(str(client[0])):
            scope = self.rewrite(scope, str(client[0]))
        return await self.app(scope, receive, send)

    @staticmethod
    def rewrite(scope: dict[str, Any], peer: str) -> dict[str, Any]:
        forwarded_for: list[str] = []
        proto = ""
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()  # what the nearest proxy saw
        scope = dict(scope)
        if forwarded_for:
            scope["client"] = (forwarded_client(peer, forwarded_for), 0)
        if proto in {"http", "https"}:
            secure = proto == "https"
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = proto
        return scope
