"""Recognising operators' personal API tokens (issued and revoked in ``ops.actions``)."""

from __future__ import annotations

from django.db.models import Q

from ops.models import ApiToken
from registry.actions import hash_token  # one hash for every bearer secret of the project
from tasks.engine import clock

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
