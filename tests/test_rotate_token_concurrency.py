"""Concurrent ``rotate-token`` calls on PostgreSQL leave exactly one live token.

Each call is a real API request in its own thread, with its own pooled connection (as
requests on several web workers would), started together by a barrier.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User

from registry import actions
from registry.models import AgentCredential, CredentialKind
from tests.support import client_for
from tests.test_claim_concurrency import THREADS, run_together

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_rotations_leave_exactly_one_live_token(make_agent, operator):
    make_agent("node-1")
    _, first = actions.issue_token("node-1", operator)
    user = User.objects.create_user("rotator", password="pw-for-tests-only", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_agent", "change_agent", "add_agentcredential"])
    )

    def rotate() -> str:
        answer = client_for(user).post("/api/v1/agents/node-1/rotate-token/")
        assert answer.status_code == 201, answer.content
        return str(answer.json()["token"])

    issued = run_together([rotate] * THREADS)

    live = AgentCredential.objects.filter(agent_id="node-1", kind=CredentialKind.TOKEN, revoked_at__isnull=True)
    assert live.count() == 1
    working = [token for token in [first, *issued] if actions.authenticate_token(token) is not None]
    assert len(working) == 1
    assert working[0] in issued
