"""Rate limits, counted in the shared cache (Redis in production, local memory in the all-in-one mode)."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle

from aegis_site.api.principals import AgentPrincipal


class ClientThrottle(SimpleRateThrottle):
    """Per agent, per operator, or per client address for anonymous requests (scope ``agent``/``operator``/``anon``)."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        user = request.user
        if isinstance(user, AgentPrincipal):
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


class EndpointThrottle(ScopedRateThrottle):
    """Stricter limits on named endpoints (``throttle_scope = "enrol"`` or ``"auth"``), per client address."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
