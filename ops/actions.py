"""Writes of the ops app: operators' personal API tokens (audited)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction

from aegis_site.core import clock
from aegis_site.core.audit import Actor, record
from aegis_site.core.errors import NotFound
from aegis_site.core.tokens import hash_token
from ops.models import ApiToken
from ops.tokens import TOKEN_PREFIX


def issue_api_token(user: Any, name: str, actor: Actor, ttl: timedelta | None = None) -> tuple[ApiToken, str]:
    """A personal token for ``user``; the plaintext is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = clock.now()
    with transaction.atomic():
        api_token = ApiToken.objects.create(
            user=user,
            name=name,
            token_prefix=token[:12],
            token_hash=hash_token(token),
            expires_at=now + ttl if ttl else None,
        )
        record(actor, "api_token.issue", "api_token", api_token.pk, name=name, user=user.get_username())
    return api_token, token


def revoke_api_token(token_id: int, user: Any, actor: Actor) -> ApiToken:
    """Revoke one of ``user``'s tokens (another user's token is not found)."""
    with transaction.atomic():
        api_token = ApiToken.objects.select_for_update().filter(pk=token_id, user=user).first()
        if api_token is None:
            raise NotFound(f"API token {token_id} does not exist")
        if api_token.revoked_at is None:
            api_token.revoked_at = clock.now()
            api_token.save(update_fields=["revoked_at"])
        record(actor, "api_token.revoke", "api_token", api_token.pk, name=api_token.name)
    return api_token
