"""``Authorization: Bearer aeo_...``: operators' personal API tokens (issued in ``ops.actions``)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication
from rest_framework.request import Request

from aegis_site.api.authentication import auth_failed, bearer_token, refuse_flooding_address
from ops import tokens


class OperatorTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer aeo_...``: an operator's personal API token, acting as that user."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        token = bearer_token(request)
        if token is None or not token.startswith(tokens.TOKEN_PREFIX):
            return None
        refuse_flooding_address(request)
        found = tokens.authenticate(token)
        if found is None:
            raise auth_failed(request, "operator_token", "unknown, revoked or expired token", token)
        return found.user, found

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
