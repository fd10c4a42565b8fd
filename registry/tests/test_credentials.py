"""Agent tokens: issued once in plaintext, stored as a hash, refused once revoked, expired or disabled."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction

from aegis_site.core.models import AuditEvent
from aegis_site.core.tokens import hash_token
from registry import actions
from registry.models import AdminState, AgentCredential, CredentialKind

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(make_agent, frozen_clock):
    return make_agent("node-1")


def stored_values(credential: AgentCredential) -> list[object]:
    """Every column of the credential's row, read back with plain SQL."""
    table = connection.ops.quote_name(AgentCredential._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [credential.pk])
        (row,) = cursor.fetchall()
    return list(row)


# --- issue ------------------------------------------------------------------------------


def test_issued_token_is_stored_only_as_hash_and_prefix(agent, operator):
    credential, token = actions.issue_token("node-1", operator)

    assert token.startswith("aeg_")
    assert len(token) > 40
    credential.refresh_from_db()
    assert credential.kind == CredentialKind.TOKEN
    assert credential.agent_id == "node-1"
    assert credential.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert credential.token_prefix == token[:12]
    assert len(credential.token_prefix) == 12
    assert credential.expires_at is None
    assert credential.revoked_at is None
    for value in stored_values(credential):
        assert token not in str(value)


def test_issued_token_does_not_appear_in_the_audit_log(agent, operator):
    _, token = actions.issue_token("node-1", operator)

    for event in AuditEvent.objects.all():
        assert token not in str(event.data)
        assert token[12:] not in str(event.data)


def test_every_issued_token_is_different(agent, operator):
    tokens = {actions.issue_token("node-1", operator)[1] for _ in range(5)}

    assert len(tokens) == 5
    assert AgentCredential.objects.filter(agent_id="node-1").count() == 5


def test_issue_is_audited(agent, operator):
    credential, _ = actions.issue_token("node-1", operator)

    event = AuditEvent.objects.get()
    assert (event.action, event.actor_label, event.object_type, event.object_id) == (
        "credential.issue",
        "tester",
        "agent",
        "node-1",
    )
    assert event.data == {"credential": credential.pk, "kind": "token"}


def test_issue_with_ttl_sets_the_expiry(agent, operator, frozen_clock):
    credential, _ = actions.issue_token("node-1", operator, ttl=timedelta(hours=1))

    credential.refresh_from_db()
    assert credential.expires_at == frozen_clock() + timedelta(hours=1)


# --- authenticate -----------------------------------------------------------------------


def test_live_token_authenticates_its_agent(agent, operator):
    _, token = actions.issue_token("node-1", operator)

    assert actions.authenticate_token(token) == agent


def test_each_token_authenticates_its_own_agent(make_agent, operator, frozen_clock):
    make_agent("node-1")
    make_agent("node-2")
    _, first = actions.issue_token("node-1", operator)
    _, second = actions.issue_token("node-2", operator)

    assert actions.authenticate_token(first).pk == "node-1"
    assert actions.authenticate_token(second).pk == "node-2"


def test_wrong_token_is_refused(agent, operator):
    _, token = actions.issue_token("node-1", operator)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")

    assert actions.authenticate_token(wrong) is None
    assert actions.authenticate_token("aeg_") is None
    assert actions.authenticate_token("") is None


def test_token_without_the_prefix_is_refused(agent, operator):
    _, token = actions.issue_token("node-1", operator)
    bare = token.removeprefix("aeg_")
    # Even a row holding the hash of the bare value does not make it a token.
    AgentCredential.objects.create(agent=agent, kind=CredentialKind.TOKEN, token_hash=hash_token(bare))

    assert actions.authenticate_token(bare) is None


def test_revoked_token_is_refused(agent, operator, frozen_clock):
    credential, token = actions.issue_token("node-1", operator)
    _, other = actions.issue_token("node-1", operator)

    actions.revoke_credential(credential.pk, operator)

    assert actions.authenticate_token(token) is None
    assert actions.authenticate_token(other) == agent
    credential.refresh_from_db()
    assert credential.revoked_at == frozen_clock()


def test_revoking_twice_keeps_the_first_revocation_time(agent, operator, frozen_clock):
    credential, _ = actions.issue_token("node-1", operator)
    first = frozen_clock.advance(10)
    actions.revoke_credential(credential.pk, operator)
    frozen_clock.advance(60)

    returned = actions.revoke_credential(credential.pk, operator)

    assert returned.revoked_at == first
    credential.refresh_from_db()
    assert credential.revoked_at == first


def test_every_revoke_is_audited(agent, operator):
    credential, _ = actions.issue_token("node-1", operator)

    actions.revoke_credential(credential.pk, operator)
    actions.revoke_credential(credential.pk, operator)

    events = list(AuditEvent.objects.order_by("id").values_list("action", "object_id", "data"))
    revoke = ("credential.revoke", "node-1", {"credential": credential.pk})
    assert events == [("credential.issue", "node-1", {"credential": credential.pk, "kind": "token"}), revoke, revoke]


def test_expired_token_is_refused(agent, operator, frozen_clock):
    _, token = actions.issue_token("node-1", operator, ttl=timedelta(minutes=5))
    frozen_clock.advance(299)
    assert actions.authenticate_token(token) == agent

    frozen_clock.advance(1)
    assert actions.authenticate_token(token) is None

    frozen_clock.advance(3600)
    assert actions.authenticate_token(token) is None


def test_token_of_a_disabled_agent_is_refused_until_it_is_enabled(agent, operator):
    _, token = actions.issue_token("node-1", operator)

    actions.set_admin_state("node-1", AdminState.DISABLED, operator)
    assert actions.authenticate_token(token) is None

    actions.set_admin_state("node-1", AdminState.ACTIVE, operator)
    assert actions.authenticate_token(token) == agent


def test_token_of_a_draining_agent_still_authenticates(agent, operator):
    """A draining agent must still connect to report the tasks it is finishing."""
    _, token = actions.issue_token("node-1", operator)

    actions.set_admin_state("node-1", AdminState.DRAINING, operator)

    assert actions.authenticate_token(token) == agent


def test_token_of_a_removed_agent_is_refused(agent, operator):
    _, token = actions.issue_token("node-1", operator)

    actions.remove_agent("node-1", operator)

    assert actions.authenticate_token(token) is None
    assert not AgentCredential.objects.exists()


# --- the database refuses a credential without its secret -------------------------------


def test_token_credential_without_a_hash_is_refused_by_the_database(agent):
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentCredential.objects.create(agent=agent, kind=CredentialKind.TOKEN, token_prefix="aeg_abcdefgh")

    assert not AgentCredential.objects.exists()


def test_certificate_credential_without_a_fingerprint_is_refused_by_the_database(agent):
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentCredential.objects.create(agent=agent, kind=CredentialKind.CERTIFICATE, cert_serial="01")

    AgentCredential.objects.create(agent=agent, kind=CredentialKind.CERTIFICATE, cert_fingerprint="AB:CD")
    assert AgentCredential.objects.count() == 1
