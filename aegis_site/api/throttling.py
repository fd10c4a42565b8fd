"""Rate limits, counted in the shared cache (Redis in production, local memory in the all-in-one mode).

Every limit keyed on an address uses ``client_address``: the socket's peer, or the
client a proxy in ``TRUSTED_PROXIES`` forwarded, never ``X-Forwarded-For`` as the
client sent it (DRF's ``get_ident`` would take that, so it is replaced here).
"""

from __future__ import annotations

import math
from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle

from aegis_site.client_address import client_address


class ByClientAddress:
    def get_ident(self, request: Request) -> str:
        return client_address(request)


class ClientThrottle(ByClientAddress, SimpleRateThrottle):
    """Per agent, per operator, or per client address for anonymous requests (scope ``agent``/``operator``/``anon``)."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user: Any = request.user  # a Django user, or an agent's principal (``is_agent``)
        if getattr(user, "is_agent", False) is True:
            self.scope, ident = "agent", f"agent:{user.agent_id}"
        elif user is not None and user.is_authenticated:
            self.scope, ident = "operator", f"user:{user.pk}"
        else:
            self.scope, ident = "anon", f"addr:{self.get_ident(request)}"
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request: Request, view: Any) -> bool:
        self.key = self.get_cache_key(request, view)
        if self.key is None or self.rate is None:
            return True
        return super().allow_request(request, view)

    def __init__(self) -> None:  # the rate depends on who asks: chosen per request
        self.rate = None


class EndpointThrottle(ByClientAddress, ScopedRateThrottle):
    """Stricter limits on named endpoints (``throttle_scope = "enrol"`` or ``"auth"``), per client address."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class FailedCredentials(ByClientAddress, SimpleRateThrottle):
    """Failed credentials per client address (scope ``auth_failure``), in fixed windows of the rate's period.

    DRF authenticates before any throttle runs, so a wrong token answers 401 and is
    never counted by the others. The authentication classes ask ``refused_for``
    before they look a credential up and ``record`` each failure. It keys on the
    address, not on the agent or the token: guessing at an agent's token from
    elsewhere cannot lock that agent out. A counter with an atomic increment, so
    that concurrent failures from many connections are all counted.
    """

    scope = "auth_failure"

    def __init__(self) -> None:
        super().__init__()
        self.limit, self.period = self.parse_rate(self.rate)

    def get_rate(self) -> str | None:
        return self.THROTTLE_RATES.get(self.scope)  # no rate configured for the scope: no limit

    def _window(self, request: Any) -> tuple[str, float]:
        now, duration = self.timer(), self.period or 60
        window = int(now // duration)
        key = self.cache_format % {"scope": self.scope, "ident": f"{self.get_ident(request)}:{window}"}
        return key, (window + 1) * duration - now

    def refused_for(self, request: Any) -> float | None:
        """Seconds until this address may try a credential again, or ``None`` if it may now."""
        if self.limit is None:
            return None
        key, remaining = self._window(request)
        return remaining if int(self.cache.get(key, 0)) >= self.limit else None

    def record(self, request: Any) -> None:
        if self.limit is None:
            return
        key, remaining = self._window(request)
        timeout = math.ceil(remaining) + 1
        if self.cache.add(key, 1, timeout=timeout):
            return
        try:
            self.cache.incr(key)
        except ValueError:  # expired between add and incr
            self.cache.add(key, 1, timeout=timeout)

    def get_cache_key(self, request: Request, view: Any) -> str | None:  # not a view throttle
        return None
