"""Agents' bearer credentials and JWTs: ``Authorization: Bearer aeg_...`` (a per-agent token) and the
JWTs of ``/api/v1/agent/token/`` (an agent's, naming its credential) and ``/api/v1/auth/token/`` (an operator's).

Built on the kit's helpers (``aegis_site.api.authentication``); listed in ``REST_FRAMEWORK``.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

from aegis_site.api import jwt_claims
from aegis_site.api.authentication import (
    PrefixedTokenAuthentication,
    auth_failed,
    bearer_token,
    refuse_flooding_address,
)
from registry import actions as registry_actions
from registry.api.principals import AgentPrincipal
from registry.models import AdminState, AgentCredential


class AgentTokenAuthentication(PrefixedTokenAuthentication):
    """``Authorization: Bearer aeg_...``: a per-agent token, stored as a hash."""

    prefix = registry_actions.TOKEN_PREFIX
    scheme = "agent_token"

    def lookup(self, token: str) -> tuple[AgentPrincipal, AgentCredential] | None:
        found = registry_actions.authenticate_token_credential(token)
        return None if found is None else (AgentPrincipal(found.agent, found.pk), found)


class AegisJWTAuthentication(JWTAuthentication):
    """Short-lived JWTs: an operator's (a user id claim) or an agent's (``agent_id`` + ``credential_id`` claims).

    An agent's JWT stays valid only while the credential it was exchanged for is
    live: rotating or revoking the credential revokes its JWTs too.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        token = bearer_token(request)
        if token is None or token.count(".") != 2:
            return None
        refuse_flooding_address(request)
        try:
            validated = self.get_validated_token(token.encode())
        except (InvalidToken, TokenError) as exc:
            raise auth_failed(request, "jwt", str(exc)[:100], token) from exc
        if "agent_id" in validated:
            credential = live_credential(validated.get("credential_id"), validated.get("agent_id"))
            if credential is None:
                raise auth_failed(request, "jwt", "the agent credential behind this token is gone", token)
            return AgentPrincipal(credential.agent, credential.pk), validated
        try:
            user = self.get_user(validated)
        except (InvalidToken, exceptions.AuthenticationFailed) as exc:
            raise auth_failed(request, "jwt", "no active user for this token", token) from exc
        if not jwt_claims.issued_under_current_password(validated, user):
            raise auth_failed(request, "jwt", "the password changed since this token was issued", token)
        return user, validated

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def live_credential(credential_id: Any, agent_id: Any) -> AgentCredential | None:
    credential = (
        AgentCredential.objects.select_related("agent")
        .filter(pk=credential_id, agent_id=agent_id, revoked_at__isnull=True)
        .first()
    )
    if credential is None or credential.agent.admin_state == AdminState.DISABLED:
        return None
    if credential.expires_at is not None and credential.expires_at <= registry_actions.clock.now():
        return None
    return credential
