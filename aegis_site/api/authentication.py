"""The bearer-credential helpers every authentication class shares: the token from the header,
the failed-credential log event and counter, the per-address flood refusal.

The classes are the apps': an agent's token (``aeg_``) and JWTs (agents' and operators') are
``registry.api.authentication``; an operator's personal token (``aeo_``) is ``ops.api.authentication``.
Each class claims only the tokens that look like its own and leaves the others to
the next class, so the order in ``REST_FRAMEWORK`` does not matter. A token that
looks like ours but does not authenticate is an ``auth_failed`` log event (with
the client address and the token's first characters, never the token) and a 401.
Failures count per client address (``API_THROTTLE_AUTH_FAILURES``): past the
limit, every credential from that address answers 429 before it is looked up.
"""

from __future__ import annotations

import logging
from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from aegis_site.api.throttling import FailedCredentials
from aegis_site.client_address import client_address
from aegis_site.core import counters

log = logging.getLogger("aegis.api")


def refuse_flooding_address(request: Any) -> None:
    """429 for an address past its failed-credentials budget, before the credential is even looked up."""
    wait = FailedCredentials().refused_for(request)
    if wait is not None:
        raise exceptions.Throttled(wait=wait)


def auth_failed(  # nosec B107  # "" means no token, not a password
    request: Any, scheme: str, reason: str, token: str = ""
) -> exceptions.AuthenticationFailed:
    counters.AUTH_FAILURES.labels(scheme).inc()
    FailedCredentials().record(request)
    log.warning(
        "auth_failed",
        extra={
            "event": "auth_failed",
            "client": client_address(request),
            "scheme": scheme,
            "reason": reason,
            "token_prefix": token[:8],
            "path": request.path,
        },
    )
    return exceptions.AuthenticationFailed("Invalid or expired credentials.")


def bearer_token(request: Request) -> str | None:
    header = authentication.get_authorization_header(request).decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class PrefixedTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <prefix>...``: a token stored as a hash; the app's subclass says how to look it up.

    A token without ``prefix`` is left to the next class; one with it that does not authenticate is a 401.
    """

    prefix = ""
    scheme = ""  # the auth_failed event's scheme, e.g. "agent_token"

    def lookup(self, token: str) -> tuple[Any, Any] | None:
        """``(user, auth)`` for a live token, ``None`` otherwise."""
        raise NotImplementedError

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        token = bearer_token(request)
        if token is None or not token.startswith(self.prefix):
            return None
        refuse_flooding_address(request)
        found = self.lookup(token)
        if found is None:
            raise auth_failed(request, self.scheme, "unknown, revoked or expired token", token)
        return found

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
