"""Recognising operators' personal API tokens (issued and revoked in ``ops.actions``)."""

from __future__ import annotations

from django.db.models import Q

from aegis_site.core import clock
from aegis_site.core.tokens import hash_token
from ops.models import ApiToken

TOKEN_PREFIX = "aeo_"  # noqa: S105  (a public marker, not a secret)  # nosec B105


def authenticate(token: str) -> ApiToken | None:
    """The live token of an active staff user, or ``None``."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    found = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_token(token), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=clock.now()))
        .first()
    )
    if found is None or not found.user.is_active or not found.user.is_staff:
        return None
    return found
