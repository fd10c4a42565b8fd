"""SSRF protection: a notification goes only to a public address, and to the very address that was checked.

A subscription's URL is the operator's input; without this check a webhook could reach
the database, the cloud metadata service (169.254.169.254) or anything else on the
server's networks. The host is resolved once, every address is checked (one private
address among public ones refuses the URL), and the request goes to the checked IP with
the original ``Host`` header and TLS server name: a DNS answer that changes between the
check and the connection (DNS rebinding) cannot redirect it. ``NOTIFY_ALLOW_PRIVATE_ADDRESSES``
lifts the check, for a receiver on the same network (and the tests' loopback receiver).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


class BlockedAddress(Exception):
    """The URL may not be requested: not http(s), no host, unresolvable, or a non-public address."""


@dataclass(frozen=True)
class PinnedURL:
    """A URL rewritten to the checked IP, with what the request needs to still name the host."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, Any] = field(default_factory=dict)


def is_public(address: str) -> bool:
    """Whether ``address`` is a public unicast address (an IPv4-mapped IPv6 address is judged as its IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope ("fe80::1%eth0") is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global  # e.g. 100.64.0.0/10 (carrier-grade NAT), neither "private" nor public
    )


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise BlockedAddress(f"cannot resolve {host}: {error}") from error
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise BlockedAddress(f"{host} resolves to no address")
    return addresses


def pin(raw_url: str) -> PinnedURL:
    """Check ``raw_url`` and return it pinned to its first (checked) address; raises ``BlockedAddress``."""
    try:
        url = httpx.URL(raw_url)
    except (httpx.InvalidURL, TypeError) as error:
        raise BlockedAddress(f"invalid URL: {error}") from error
    if url.scheme not in _DEFAULT_PORTS:
        raise BlockedAddress(f"only http and https URLs, not {url.scheme or 'none'}")
    host = url.host
    if not host:
        raise BlockedAddress("the URL has no host")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    addresses = resolve(host, port)
    if not settings.NOTIFY_ALLOW_PRIVATE_ADDRESSES:
        refused = [address for address in addresses if not is_public(address)]
        if refused:
            raise BlockedAddress(f"{host} resolves to a non-public address ({refused[0]})")
    address = addresses[0].split("%", 1)[0]
    host_header = host if url.port is None else f"{host}:{url.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if url.port is None else f"[{host}]:{url.port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
    return PinnedURL(url.copy_with(host=address), {"Host": host_header}, extensions)
