"""Registry writes: agents, their admin state, presence and credentials."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Q

from broker import outbox
from ops.audit import Actor, record
from registry.models import AdminState, Agent, AgentCredential, Connectivity, CredentialKind
from tasks.engine import clock

TOKEN_PREFIX = "aeg_"  # noqa: S105  (a public marker, not a secret)


def hash_token(token: str) -> str:
    """Tokens carry 256 random bits, so a fast hash is enough (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def register_agent(
    agent_id: str,
    actor: Actor,
    *,
    name: str = "",
    labels: Mapping[str, Any] | None = None,
    capabilities: list[str] | None = None,
    max_concurrency: int | None = None,
    version: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Agent, bool]:
    """Create an agent, or update the given fields of an existing one."""
    from tasks.actions import add_agent_to_continuous_jobs

    fields: dict[str, Any] = {}
    if max_concurrency is not None:
        fields["max_concurrency"] = max_concurrency
    if name:
        fields["name"] = name
    if version:
        fields["version"] = version
    if labels is not None:
        fields["labels"] = dict(labels)
    if capabilities is not None:
        fields["capabilities"] = list(capabilities)
    if metadata is not None:
        fields["metadata"] = dict(metadata)
    with transaction.atomic():
        agent, created = Agent.objects.update_or_create(pk=agent_id, defaults=fields)
        record(actor, "agent.register" if created else "agent.update", "agent", agent_id, **_jsonable(fields))
    add_agent_to_continuous_jobs(agent)
    return agent, created


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if isinstance(value, str | int | list | dict)}


def set_admin_state(agent_id: str, state: AdminState, actor: Actor) -> Agent:
    """Drain (finish what runs, take nothing new), disable, or make active again."""
    now = clock.now()
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        previous = agent.admin_state
        agent.admin_state = state
        agent.save(update_fields=["admin_state", "updated_at"])
        if state == AdminState.DRAINING and previous != AdminState.DRAINING:
            outbox.write([outbox.to_inbox(agent_id, "agent.drain", now)])
        record(actor, f"agent.{_verb(state)}", "agent", agent_id, previous=previous)
    return agent


def _verb(state: AdminState) -> str:
    return {AdminState.ACTIVE: "enable", AdminState.DRAINING: "drain", AdminState.DISABLED: "disable"}[state]


def mark_online(agent_id: str, at: datetime | None = None) -> int:
    now = at or clock.now()
    return Agent.objects.filter(pk=agent_id).update(
        connectivity=Connectivity.ONLINE, last_seen_at=now, disconnect_reason=""
    )


def mark_offline(agent_id: str, reason: str, at: datetime | None = None) -> int:
    now = at or clock.now()
    return Agent.objects.filter(pk=agent_id, connectivity=Connectivity.ONLINE).update(
        connectivity=Connectivity.OFFLINE, disconnect_reason=reason[:200], updated_at=now
    )


_TOUCH_SET = (
    "last_seen_at = {ts}, "
    # Heartbeats bring back an agent that only the silence sweep took offline; an
    # agent whose Last Will said offline comes back with its status message instead.
    "connectivity = CASE WHEN connectivity = 'offline' AND disconnect_reason = 'heartbeat timeout' "
    "THEN 'online' ELSE connectivity END, "
    "disconnect_reason = CASE WHEN connectivity = 'offline' AND disconnect_reason = 'heartbeat timeout' "
    "THEN '' ELSE disconnect_reason END"
)


def touch_agents(last_seen: Mapping[str, datetime]) -> int:
    """Record many heartbeats in one statement (the bridge coalesces them per flush window)."""
    if not last_seen:
        return 0
    field = Agent._meta.get_field("last_seen_at")
    ids = list(last_seen)
    stamps = [field.get_db_prep_value(last_seen[agent_id], connection) for agent_id in ids]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE agents SET {_TOUCH_SET.format(ts='v.ts')} "  # noqa: S608  (constant SQL)
                "FROM unnest(%s::varchar[], %s::timestamptz[]) AS v(id, ts) WHERE agents.id = v.id",
                [ids, stamps],
            )
            return cursor.rowcount
        cursor.executemany(
            f"UPDATE agents SET {_TOUCH_SET.format(ts='%s')} WHERE id = %s",  # noqa: S608  (constant SQL)
            list(zip(stamps, ids, strict=True)),
        )
        return cursor.rowcount


def mark_silent_agents_offline(heartbeat_interval_s: float, missed: int, at: datetime | None = None) -> int:
    """Online agents not heard from for ``missed`` heartbeat intervals go offline."""
    now = at or clock.now()
    cutoff = now - timedelta(seconds=heartbeat_interval_s * missed)
    return Agent.objects.filter(
        Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True), connectivity=Connectivity.ONLINE
    ).update(connectivity=Connectivity.OFFLINE, disconnect_reason="heartbeat timeout", updated_at=now)


def issue_token(agent_id: str, actor: Actor, ttl: timedelta | None = None) -> tuple[AgentCredential, str]:
    """Create a bearer token for the agent. The plaintext is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = clock.now()
    with transaction.atomic():
        credential = AgentCredential.objects.create(
            agent_id=agent_id,
            kind=CredentialKind.TOKEN,
            token_prefix=token[:12],
            token_hash=hash_token(token),
            expires_at=now + ttl if ttl else None,
        )
        record(actor, "credential.issue", "agent", agent_id, credential=credential.pk, kind="token")
    return credential, token


def revoke_credential(credential_id: int, actor: Actor) -> AgentCredential:
    with transaction.atomic():
        credential = AgentCredential.objects.select_for_update().get(pk=credential_id)
        if credential.revoked_at is None:
            credential.revoked_at = clock.now()
            credential.save(update_fields=["revoked_at"])
        record(actor, "credential.revoke", "agent", credential.agent_id, credential=credential.pk)
    return credential


def authenticate_token(token: str) -> Agent | None:
    """The agent a live token belongs to, or ``None`` (unknown, revoked, expired or disabled agent)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    now = clock.now()
    credential = (
        AgentCredential.objects.select_related("agent")
        .filter(token_hash=hash_token(token), kind=CredentialKind.TOKEN, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if credential is None or credential.agent.admin_state == AdminState.DISABLED:
        return None
    return credential.agent


def remove_agent(agent_id: str, actor: Actor) -> None:
    """Delete an agent. Its open pinned tasks are canceled first: no other agent may run them."""
    from tasks.engine.jobs import cancel_tasks
    from tasks.models import HELD_STATES, Task

    now = clock.now()
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        # Unpinned tasks it held go back to the queue on the dispatcher's next lease sweep.
        Task.objects.filter(agent_id=agent_id, pinned=False, state__in=HELD_STATES).update(lease_expires_at=now)
        cancel_tasks(
            Task.objects.filter(agent_id=agent_id, pinned=True),
            now,
            force=True,
            reason="agent removed",
            actor=actor.label,
        )
        record(actor, "agent.remove", "agent", agent_id, labels=agent.labels)
        agent.delete()


def record_hello(
    agent_id: str,
    *,
    version: str,
    capabilities: list[str],
    labels: Mapping[str, str],
    max_concurrency: int,
    at: datetime | None = None,
) -> tuple[Agent, bool]:
    """An agent said hello: create it on first contact (the broker authenticated it by its certificate),
    keep what it reports about itself, and mark it online. Returns the agent and whether what it
    offers changed (so continuous jobs may take it in). Audited only when something changed."""
    now = at or clock.now()
    reported = {
        "version": version,
        "capabilities": list(capabilities),
        "labels": dict(labels),
        "max_concurrency": max_concurrency,
    }
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(pk=agent_id).first()
        created = agent is None
        if agent is None:
            agent = Agent(pk=agent_id, name=agent_id)
        changed = {key: value for key, value in reported.items() if getattr(agent, key) != value}
        for key, value in reported.items():
            setattr(agent, key, value)
        agent.connectivity = Connectivity.ONLINE
        agent.last_seen_at = now
        agent.disconnect_reason = ""
        agent.save()
        if created or changed:
            record(Actor.agent(agent_id), "agent.register" if created else "agent.update", "agent", agent_id, **changed)
    offers_changed = created or bool({"capabilities", "labels"} & changed.keys())
    return agent, offers_changed
