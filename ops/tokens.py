"""Recognising operators' personal API tokens (issued and revoked in ``ops.actions``)."""

from __future__ import annotations

import hashlib

from django.db.models import Q

from ops.models import ApiToken
from tasks.engine import clock

TOKEN_PREFIX = "aeo_"  # noqa: S105  (a public marker, not a secret)  # nosec B105


def hash_token(token: str) -> str:
    """256 random bits: a fast hash is enough (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


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
