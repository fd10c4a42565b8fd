"""``Authorization: Bearer aeo_...``: operators' personal API tokens (issued in ``ops.actions``)."""

from __future__ import annotations

from typing import Any

from aegis_site.api.authentication import PrefixedTokenAuthentication
from ops import tokens


class OperatorTokenAuthentication(PrefixedTokenAuthentication):
    """``Authorization: Bearer aeo_...``: an operator's personal API token, acting as that user."""

    prefix = tokens.TOKEN_PREFIX
    scheme = "operator_token"

    def lookup(self, token: str) -> tuple[Any, Any] | None:
        found = tokens.authenticate(token)
        return None if found is None else (found.user, found)
