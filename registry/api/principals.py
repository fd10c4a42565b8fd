"""Who a request comes from when it is not a Django user: an agent holding a credential.

The API kit recognises it by ``is_agent`` (``aegis_site.api.permissions``, ``throttling``), not by its class.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.models import Agent


@dataclass(frozen=True)
class AgentPrincipal:
    """``request.user`` for an agent's request. Never staff, never has a model permission."""

    agent: Agent
    credential_id: int

    is_agent = True
    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True

    @property
    def agent_id(self) -> str:
        return self.agent.pk

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def get_username(self) -> str:
        return f"agent:{self.agent.pk}"

    def __str__(self) -> str:
        return self.get_username()
