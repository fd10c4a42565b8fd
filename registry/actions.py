"""Registry writes: agents, their admin state, presence and credentials."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Q

from aegis_site.core import clock, wakeup
from aegis_site.core.audit import Actor, entry, record, record_all
from aegis_site.core.bulk import update_each
from aegis_site.core.errors import DomainError
from aegis_site.core.tokens import hash_token
from registry import signals
from registry.models import AdminState, Agent, AgentCredential, Connectivity, CredentialKind, EnrolmentToken, Transport
from registry.pki.agents import AgentBundle, AgentCertificate, issue_certificate, issued_agent_certs, write_agent_files
from registry.pki.crypto import common_name, normalize_serial
from registry.pki.layout import CaLayout
from registry.pki.revocation import revoke_serials
from registry.policy import EnrolmentPolicy

log = logging.getLogger("aegis.registry")

TOKEN_PREFIX = "aeg_"  # noqa: S105  (a public marker, not a secret)  # nosec B105


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
    transport: Transport | None = None,
) -> tuple[Agent, bool]:
    """Create an agent, or update the given fields of an existing one.

    ``signals.agent_registered`` (in this transaction): the agent joins the continuous jobs it matches.
    """
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
    if transport is not None:
        fields["transport"] = str(transport)
    with transaction.atomic():
        agent, created = Agent.objects.update_or_create(pk=agent_id, defaults=fields)
        record(actor, "agent.register" if created else "agent.update", "agent", agent_id, **_jsonable(fields))
        signals.agent_registered.send(Agent, agent=agent, created=created)
    return agent, created


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if isinstance(value, str | int | list | dict)}


def set_admin_state(agent_id: str, state: AdminState, actor: Actor) -> Agent:
    """Drain (finish what runs, take nothing new), disable, or make active again.

    A change is told to the agent (``signals.admin_state_changed``: ``agent.drain``, ``agent.resume``).
    """
    now = clock.now()
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        previous = agent.admin_state
        agent.admin_state = state
        agent.save(update_fields=["admin_state", "updated_at"])
        if state != previous:
            signals.admin_state_changed.send(Agent, agent_id=agent_id, previous=previous, state=state, at=now)
        if state == AdminState.ACTIVE and previous != AdminState.ACTIVE:
            wakeup.notify_on_commit(agents=[agent_id])  # its waiting HTTP claims, and the dispatcher, look now
        record(actor, f"agent.{_verb(state)}", "agent", agent_id, previous=previous)
    return agent


def _verb(state: AdminState) -> str:
    return {AdminState.ACTIVE: "enable", AdminState.DRAINING: "drain", AdminState.DISABLED: "disable"}[state]


def mark_online(agent_id: str, at: datetime | None = None, transport: Transport | None = None) -> int:
    """The agent is alive; with ``transport``, also how it is reached from now on (``mark_agents_online``)."""
    return mark_agents_online([agent_id], at, transport)


def mark_agents_online(agent_ids: Iterable[str], at: datetime | None = None, transport: Transport | None = None) -> int:
    """These agents are alive; with ``transport``, also how they are reached from now on.

    Their rows are locked in id order (as every writer of ``agents`` locks them), then
    changed in one UPDATE. An agent that was not online comes online
    (``signals.agent_connectivity_changed``, in this transaction); for one online
    already, only ``last_seen_at`` moves. Returns how many agents exist.
    """
    now = at or clock.now()
    fields: dict[str, Any] = {"connectivity": Connectivity.ONLINE, "last_seen_at": now, "disconnect_reason": ""}
    if transport is not None:
        fields["transport"] = transport
    with transaction.atomic(savepoint=False):
        rows = _locked_rows(agent_ids, "pk", "connectivity")
        ids = [agent_id for agent_id, _ in rows]
        if ids:
            Agent.objects.filter(pk__in=ids).update(**fields, updated_at=now)
        for agent_id, connectivity in rows:
            if connectivity != Connectivity.ONLINE:
                signals.agent_connectivity_changed.send(Agent, agent_id=agent_id, online=True, at=now, reason="")
    return len(ids)


def _locked_rows(agent_ids: Iterable[str], *fields: str) -> list[tuple[Any, ...]]:
    """These agents' ``fields``, their rows locked in id order (inside the caller's transaction)."""
    ids = sorted(set(agent_ids))
    if not ids:
        return []
    rows = Agent.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list(*fields)
    return [tuple(row) for row in rows]


def use_transport(agent_id: str, transport: Transport) -> int:
    """The agent reached us over ``transport`` (an HTTP claim): the dispatcher pushes only to MQTT agents.

    A conditional UPDATE: nothing is written when the agent is already recorded so.
    """
    return (
        Agent.objects.filter(pk=agent_id)
        .exclude(transport=transport)
        .update(transport=transport, updated_at=clock.now())
    )


def mark_offline(agent_id: str, reason: str, at: datetime | None = None) -> int:
    """An online agent goes offline (``mark_agents_offline``)."""
    return mark_agents_offline([agent_id], reason, at)


def mark_agents_offline(agent_ids: Iterable[str], reason: str, at: datetime | None = None) -> int:
    """The online ones of these agents go offline, in one UPDATE after their rows are locked in id order;
    each is told (``signals.agent_connectivity_changed``, in this transaction). Returns how many went."""
    now = at or clock.now()
    with transaction.atomic(savepoint=False):
        rows = _locked_rows(agent_ids, "pk", "connectivity")
        went = [agent_id for agent_id, connectivity in rows if connectivity == Connectivity.ONLINE]
        if went:
            Agent.objects.filter(pk__in=went).update(
                connectivity=Connectivity.OFFLINE, disconnect_reason=reason[:200], updated_at=now
            )
        for agent_id in went:
            signals.agent_connectivity_changed.send(Agent, agent_id=agent_id, online=False, at=now, reason=reason[:200])
    return len(went)


_TOUCH_SET = (
    "last_seen_at = {ts}, "
    # Heartbeats bring back an agent that only the silence sweep took offline; an
    # agent whose Last Will said offline comes back with its status message instead.
    "connectivity = CASE WHEN connectivity = 'offline' AND disconnect_reason = 'heartbeat timeout' "
    "THEN 'online' ELSE connectivity END, "
    "disconnect_reason = CASE WHEN connectivity = 'offline' AND disconnect_reason = 'heartbeat timeout' "
    "THEN '' ELSE disconnect_reason END, "
    # A revival is a change the admin's live feed watches for (agents.updated_at); a plain heartbeat is not.
    "updated_at = CASE WHEN connectivity = 'offline' AND disconnect_reason = 'heartbeat timeout' "
    "THEN {ts} ELSE updated_at END"
)


def touch_agents(last_seen: Mapping[str, datetime]) -> int:
    """Record many heartbeats in one statement (the bridge coalesces them per flush window).

    The rows are locked in id order, as the claims lock them: in any other order
    a flush and a claim waiting for each other's rows deadlock. An agent a heartbeat
    revives (the silence sweep had taken it offline) is told
    (``signals.agent_connectivity_changed``), in this statement's transaction.
    """
    if not last_seen:
        return 0
    field = Agent._meta.get_field("last_seen_at")
    ids = sorted(last_seen)
    stamps = [field.get_db_prep_value(last_seen[agent_id], connection) for agent_id in ids]
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # v holds each row as locked (FOR UPDATE reads its latest version): whether this heartbeat revives it.
            cursor.execute(
                f"UPDATE agents SET {_TOUCH_SET.format(ts='v.ts')} "  # noqa: S608  (constant SQL)  # nosec B608
                "FROM (SELECT a.id, u.ts, a.connectivity = 'offline' AND a.disconnect_reason = 'heartbeat timeout' "
                "AS revives FROM agents a JOIN unnest(%s::varchar[], %s::timestamptz[]) AS u(id, ts) "
                "ON a.id = u.id ORDER BY a.id FOR UPDATE OF a) AS v WHERE agents.id = v.id RETURNING v.id, v.revives",
                [ids, stamps],
            )
            touched = cursor.rowcount
            revived = sorted(agent_id for agent_id, revives in cursor.fetchall() if revives)
        else:  # SQLite serialises writers: what is read here is what the UPDATE finds
            marks = ", ".join(["%s"] * len(ids))
            cursor.execute(
                f"SELECT id FROM agents WHERE id IN ({marks}) AND connectivity = 'offline' "  # noqa: S608  # nosec B608
                "AND disconnect_reason = 'heartbeat timeout'",
                ids,
            )
            revived = sorted(row[0] for row in cursor.fetchall())
            cursor.executemany(
                f"UPDATE agents SET {_TOUCH_SET.format(ts='%s')} WHERE id = %s",  # noqa: S608  (constant SQL)  # nosec B608
                list(zip(stamps, stamps, ids, strict=True)),
            )
            touched = cursor.rowcount
        for agent_id in revived:
            signals.agent_connectivity_changed.send(
                Agent, agent_id=agent_id, online=True, at=last_seen[agent_id], reason=""
            )
        return touched


def lock_agents(agent_ids: Iterable[str]) -> None:
    """Lock these agents' rows in id order, inside the caller's transaction.

    Every writer of ``agents`` takes its rows in id order (the claims, the
    heartbeat flush, the silence sweep); a transaction that goes on to change
    several agents one by one (the bridge's batch of hellos and statuses, which
    arrive in any order) takes them all here first, or it deadlocks with those.
    """
    _locked_rows(agent_ids, "pk")


def mark_silent_agents_offline(heartbeat_interval_s: float, missed: int, at: datetime | None = None) -> int:
    """Online agents not heard from for ``missed`` heartbeat intervals go offline.

    The rows are locked first, in id order (as the claims and the heartbeat flush
    lock them), then updated: an UPDATE alone locks in scan order and can deadlock.
    """
    now = at or clock.now()
    cutoff = now - timedelta(seconds=heartbeat_interval_s * missed)
    silent = Agent.objects.filter(
        Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True), connectivity=Connectivity.ONLINE
    )
    with transaction.atomic():
        ids = list(silent.select_for_update().order_by("pk").values_list("pk", flat=True))
        if not ids:
            return 0
        went = silent.filter(pk__in=ids).update(
            connectivity=Connectivity.OFFLINE, disconnect_reason="heartbeat timeout", updated_at=now
        )
        for agent_id in ids:  # locked above and still online then: each one changed
            signals.agent_connectivity_changed.send(
                Agent, agent_id=agent_id, online=False, at=now, reason="heartbeat timeout"
            )
        return went


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
    credential = authenticate_token_credential(token)
    return None if credential is None else credential.agent


def authenticate_token_credential(token: str) -> AgentCredential | None:
    """The live token credential (its agent loaded), or ``None``."""
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
    return credential


def remove_agent(agent_id: str, actor: Actor) -> None:
    """Delete an agent. Its open pinned tasks are canceled first: no other agent may run them.

    That, and sending the unpinned tasks it held back to the queue, is the tasks side's
    (``signals.agent_removing``), in this transaction, before the row goes.
    """
    now = clock.now()
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent_id)
        signals.agent_removing.send(Agent, agent_id=agent_id, actor=actor, at=now)
        record(actor, "agent.remove", "agent", agent_id, labels=agent.labels)
        agent.delete()


@dataclass(frozen=True, slots=True)
class HelloFacts:
    """What an agent's hello says about the agent itself."""

    agent_id: str
    version: str
    capabilities: list[str]
    labels: Mapping[str, str]
    max_concurrency: int


# What a hello writes on an agent that exists (one UPDATE for all of a batch's hellos: ``update_each``, not
# ``bulk_update``, whose CASE WHEN per row and field took most of the bridge's CPU in a storm).
_HELLO_FIELDS = [
    "version",
    "capabilities",
    "labels",
    "max_concurrency",
    "connectivity",
    "last_seen_at",
    "disconnect_reason",
    "transport",
    "updated_at",
]


def record_hello(
    agent_id: str,
    *,
    version: str,
    capabilities: list[str],
    labels: Mapping[str, str],
    max_concurrency: int,
    at: datetime | None = None,
) -> tuple[Agent, bool]:
    """One agent's hello (``record_hellos``)."""
    return record_hellos([HelloFacts(agent_id, version, capabilities, labels, max_concurrency)], at)[0]


def record_hellos(hellos: list[HelloFacts], at: datetime | None = None) -> list[tuple[Agent, bool]]:
    """Agents said hello (one hello per agent): create each on first contact (the broker authenticated it by its
    certificate), keep what it reports about itself, and mark it online. Returns, per hello, the agent and
    whether what it offers changed (so continuous jobs may take it in). Audited only when something changed.

    Set-based, so that a reconnect storm costs a few statements per batch, not per agent: the rows are
    locked in id order, the new agents inserted in one statement, the others updated in one.
    An agent enrolled with a bootstrap token stays within that token's policy: labels and
    capabilities it may not claim are left out and logged (``policy_refused``; not audited: an
    agent could send such hellos without end)."""
    now = at or clock.now()
    if len({hello.agent_id for hello in hellos}) < len(hellos):
        raise ValueError("record_hellos takes one hello per agent")
    with transaction.atomic():
        ids = sorted(hello.agent_id for hello in hellos)
        known = {agent.pk: agent for agent in Agent.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
        created: list[Agent] = []
        updated: list[Agent] = []
        results: list[tuple[Agent, bool]] = []
        changes: list[tuple[Agent, bool, bool, dict[str, Any]]] = []
        for hello in hellos:
            agent = known.get(hello.agent_id)
            if agent is None:
                agent = Agent(pk=hello.agent_id, name=hello.agent_id)
            reported: dict[str, Any] = {
                "version": hello.version,
                "capabilities": list(hello.capabilities),
                "labels": dict(hello.labels),
                "max_concurrency": hello.max_concurrency,
            }
            if agent.enrolment_policy is not None:
                reported.update(_within_policy(agent, hello.labels, hello.capabilities))
            changed = {key: value for key, value in reported.items() if getattr(agent, key) != value}
            is_new = hello.agent_id not in known
            came_online = not is_new and agent.connectivity != Connectivity.ONLINE
            for key, value in reported.items():
                setattr(agent, key, value)
            agent.connectivity = Connectivity.ONLINE
            agent.last_seen_at = now
            agent.disconnect_reason = ""
            agent.transport = Transport.MQTT  # it holds an MQTT session now: the dispatcher pushes to it
            agent.updated_at = now
            (created if is_new else updated).append(agent)
            changes.append((agent, is_new, came_online, changed))
            results.append((agent, is_new or bool({"capabilities", "labels"} & changed.keys())))
        Agent.objects.bulk_create(created)
        update_each(
            Agent, _HELLO_FIELDS, [[agent.pk, *(getattr(agent, name) for name in _HELLO_FIELDS)] for agent in updated]
        )
        audit = []
        for agent, is_new, came_online, changed in changes:
            if came_online:
                signals.agent_connectivity_changed.send(Agent, agent_id=agent.pk, online=True, at=now, reason="")
            if is_new or changed:
                action = "agent.register" if is_new else "agent.update"
                audit.append(entry(Actor.agent(agent.pk), action, "agent", agent.pk, **changed))
        record_all(audit)
    return results


def _within_policy(agent: Agent, labels: Mapping[str, str], capabilities: list[str]) -> dict[str, Any]:
    """The labels and capabilities of a hello, cut to the agent's enrolment policy; what was cut is logged."""
    policy = EnrolmentPolicy.from_json(agent.enrolment_policy or {})
    kept = policy.restrict(agent.labels, labels, capabilities)
    if kept.refused_labels or kept.refused_capabilities:
        refused = {"labels": kept.refused_labels, "capabilities": kept.refused_capabilities}
        log.warning(
            "hello outside enrolment policy",
            extra={"event": "policy_refused", "agent_id": agent.pk, "enrolment_token": policy.token_id, **refused},
        )
    return {"labels": kept.labels, "capabilities": kept.capabilities}


ENROLMENT_PREFIX = "aen_"


class EnrolmentRefused(DomainError):
    """The enrolment token is unknown, used up, expired, does not allow this agent id, or (with ``fields``,
    code ``outside_policy``) does not allow the labels or capabilities asked for (HTTP 403)."""

    status = 403

    def __init__(self, message: str, code: str = "enrolment_refused", fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.code = code
        self.fields = fields or {}


def create_enrolment_token(
    actor: Actor,
    *,
    name: str = "",
    agent_id: str = "",
    fixed_labels: Mapping[str, str] | None = None,
    allowed_labels: Mapping[str, list[str]] | None = None,
    allowed_capabilities: list[str] | None = None,
    agent_id_prefix: str = "",
    uses: int = 1,
    ttl: timedelta | None = None,
) -> tuple[EnrolmentToken, str]:
    """A bootstrap token for ``uses`` enrolments; the plaintext is returned once and never stored.

    Its policy (``registry.policy``) defaults to nothing: an agent enrolled with it
    gets ``fixed_labels`` and may claim no label or capability of its own.
    """
    token = ENROLMENT_PREFIX + secrets.token_urlsafe(32)
    policy = {
        "fixed_labels": dict(fixed_labels or {}),
        "allowed_labels": {key: list(values) for key, values in (allowed_labels or {}).items()},
        "allowed_capabilities": list(allowed_capabilities or []),
        "agent_id_prefix": agent_id_prefix,
    }
    with transaction.atomic():
        enrolment = EnrolmentToken.objects.create(
            name=name,
            token_prefix=token[:12],
            token_hash=hash_token(token),
            agent_id=agent_id,
            uses_left=uses,
            expires_at=clock.now() + ttl if ttl else None,
            **policy,
        )
        record(actor, "enrolment_token.create", "enrolment_token", enrolment.pk, agent_id=agent_id, uses=uses, **policy)
    return enrolment, token


def set_enrolment_policy(
    token_id: int,
    actor: Actor,
    *,
    fixed_labels: Mapping[str, str] | None = None,
    allowed_labels: Mapping[str, list[str]] | None = None,
    allowed_capabilities: list[str] | None = None,
    agent_id_prefix: str | None = None,
) -> EnrolmentToken:
    """Change what later enrolments with the token may claim (``None``: leave that part as it is).

    Agents already enrolled keep the policy they enrolled under (``Agent.enrolment_policy``).
    """
    given = {
        "fixed_labels": None if fixed_labels is None else dict(fixed_labels),
        "allowed_labels": None if allowed_labels is None else {k: list(v) for k, v in allowed_labels.items()},
        "allowed_capabilities": None if allowed_capabilities is None else list(allowed_capabilities),
        "agent_id_prefix": agent_id_prefix,
    }
    with transaction.atomic():
        enrolment = EnrolmentToken.objects.select_for_update().get(pk=token_id)
        changed = {key: value for key, value in given.items() if value is not None and getattr(enrolment, key) != value}
        previous = {key: getattr(enrolment, key) for key in changed}
        for key, value in changed.items():
            setattr(enrolment, key, value)
        if changed:
            enrolment.save(update_fields=list(changed))
            record(actor, "enrolment_token.policy", "enrolment_token", token_id, previous=previous, **changed)
    return enrolment


def revoke_enrolment_token(token_id: int, actor: Actor) -> EnrolmentToken:
    with transaction.atomic():
        enrolment = EnrolmentToken.objects.select_for_update().get(pk=token_id)
        if enrolment.revoked_at is None:
            enrolment.revoked_at = clock.now()
            enrolment.save(update_fields=["revoked_at"])
        record(actor, "enrolment_token.revoke", "enrolment_token", enrolment.pk)
    return enrolment


def enrol(
    bootstrap: str,
    agent_id: str,
    *,
    name: str = "",
    labels: Mapping[str, Any] | None = None,
    capabilities: list[str] | None = None,
    max_concurrency: int | None = None,
    version: str = "",
    transport: Transport | None = None,
) -> tuple[Agent, AgentCredential, str]:
    """Trade a bootstrap token for the agent's own token: create the agent, or claim it if the token is bound to it.

    ``transport`` declares how the agent takes work (``None``: as recorded, ``mqtt`` for a new
    agent); its first HTTP heartbeat or claim, or its MQTT hello, records it anyway.

    Claiming revokes the agent's earlier tokens (the enrolling process is its new
    holder). Refused (``EnrolmentRefused``) for an unknown, used-up, expired or
    revoked token, for an id the token is not bound to, and for an existing agent
    with an unbound token; and, naming the fields, for labels, capabilities or an
    id its policy does not allow. A refusal creates nothing and uses nothing up.
    The token's fixed labels are added to the agent's, and its policy is copied
    onto the agent: its later hellos stay within it.
    """
    now = clock.now()
    with transaction.atomic():
        enrolment = (
            EnrolmentToken.objects.select_for_update()
            .filter(token_hash=hash_token(bootstrap), revoked_at__isnull=True, uses_left__gt=0)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .first()
        )
        if enrolment is None:
            raise EnrolmentRefused("unknown, used up, expired or revoked enrolment token")
        if enrolment.agent_id and enrolment.agent_id != agent_id:
            raise EnrolmentRefused("this enrolment token is for another agent id")
        existing = Agent.objects.select_for_update().filter(pk=agent_id).first()
        if existing is not None and not enrolment.agent_id:
            raise EnrolmentRefused(f"agent {agent_id} exists; claiming it needs a token bound to it", "agent_exists")
        if existing is not None and existing.admin_state == AdminState.DISABLED:
            raise EnrolmentRefused(f"agent {agent_id} is disabled")
        _check_policy(enrolment, agent_id, labels or {}, capabilities or [], existing.labels if existing else {})
        enrolment.uses_left -= 1
        enrolment.save(update_fields=["uses_left"])
        actor = Actor.agent(agent_id)
        agent, _created = register_agent(
            agent_id,
            actor,
            name=name,
            labels={**(existing.labels if existing else {}), **(labels or {}), **enrolment.fixed_labels},
            capabilities=capabilities,
            max_concurrency=max_concurrency,
            version=version,
            transport=transport,
        )
        Agent.objects.filter(pk=agent_id).update(enrolment_policy=enrolment.policy.as_json())
        agent.enrolment_policy = enrolment.policy.as_json()
        if existing is not None:
            for credential in AgentCredential.objects.filter(
                agent_id=agent_id, kind=CredentialKind.TOKEN, revoked_at__isnull=True
            ):
                revoke_credential(credential.pk, actor)
        credential, token = issue_token(agent_id, actor)
        record(actor, "agent.enrol", "agent", agent_id, enrolment_token=enrolment.pk, claimed=existing is not None)
    return agent, credential, token


def _check_policy(
    enrolment: EnrolmentToken,
    agent_id: str,
    labels: Mapping[str, str],
    capabilities: list[str],
    current: Mapping[str, str],
) -> None:
    """Refuse (naming each field) what the token's policy does not let the enrolling agent claim.

    A label the agent already has (claiming an existing agent) may be named again as it is.
    """
    fields: dict[str, list[str]] = {}
    if enrolment.agent_id_prefix and not enrolment.agent_id and not agent_id.startswith(enrolment.agent_id_prefix):
        fields["agent_id"] = [f"this enrolment token enrols only ids starting with {enrolment.agent_id_prefix!r}"]
    asked = {key: value for key, value in labels.items() if current.get(key) != value}
    for refusal in enrolment.policy.refusals(asked, capabilities):
        fields.setdefault(refusal.field, []).append(refusal.message)
    if fields:
        raise EnrolmentRefused(
            f"this enrolment token does not allow the {' and '.join(sorted(fields))} asked for",
            "outside_policy",
            fields,
        )


def rotate_token(agent_id: str, actor: Actor) -> tuple[AgentCredential, str]:
    """Issue a new token and revoke the agent's other live tokens (and with them the JWTs made from them).

    The agent's row is locked first, so concurrent rotations run one after the other: each revokes
    what the one before it issued, and exactly one token is live once they are all done.
    """
    with transaction.atomic():
        if not Agent.objects.select_for_update().filter(pk=agent_id).values_list("pk", flat=True):
            raise Agent.DoesNotExist(f"agent {agent_id} does not exist")
        old = list(
            AgentCredential.objects.filter(agent_id=agent_id, kind=CredentialKind.TOKEN, revoked_at__isnull=True)
        )
        credential, token = issue_token(agent_id, actor)
        for previous in old:
            revoke_credential(previous.pk, actor)
    return credential, token


def add_certificate(
    agent_id: str, fingerprint: str, serial: str, expires_at: datetime, actor: Actor
) -> AgentCredential:
    """Record a client certificate issued for the agent (created if new): what revocation and the bridge check."""
    with transaction.atomic():
        if not Agent.objects.filter(pk=agent_id).exists():
            register_agent(agent_id, actor)
        credential = AgentCredential.objects.create(
            agent_id=agent_id,
            kind=CredentialKind.CERTIFICATE,
            cert_fingerprint=fingerprint,
            cert_serial=serial,
            expires_at=expires_at,
        )
        record(
            actor, "credential.issue", "agent", agent_id, credential=credential.pk, kind="certificate", serial=serial
        )
    return credential


def revoked_certificate_agents() -> frozenset[str]:
    """Agents that hold certificates and none of them is live: the bridge drops what they send."""
    rows = (
        AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE)
        .values("agent_id")
        .annotate(live=Count("id", filter=Q(revoked_at__isnull=True)))
        .filter(live=0)
        .values_list("agent_id", flat=True)
    )
    return frozenset(rows)


def ping_agent(agent_id: str, actor: Actor) -> Agent:
    """Ask the agent for a heartbeat now (protocol ``ping``): an operator's liveness probe, audited.

    The message goes through the outbox like every inbox message (``signals.agent_pinged``), so it
    is published after the commit. An agent that is offline gets it only if its broker session kept it.
    """
    now = clock.now()
    with transaction.atomic():
        agent = Agent.objects.get(pk=agent_id)
        signals.agent_pinged.send(Agent, agent_id=agent_id, at=now)
        record(actor, "agent.ping", "agent", agent_id, connectivity=agent.connectivity)
    return agent


# --- certificates (the CA's files: registry.pki) ----------------------------------------------


@dataclass(frozen=True)
class IssuedAgentCertificate:
    """What ``issue_agent_certificate`` made: the agent's files, the credential, and where the files went."""

    certificate: AgentCertificate  # ``certificate.files``: certificate, key and ``ca.crt`` as bytes
    credential: AgentCredential
    bundle: AgentBundle | None  # the paths, when written to ``out_directory``


def issue_agent_certificate(
    layout: CaLayout, agent_id: str, actor: Actor, *, out_directory: Path | None = None
) -> IssuedAgentCertificate:
    """Issue the agent's client certificate with the broker directory's CA and record it as a credential (audited).

    A new agent is registered. With ``out_directory`` the certificate, key and ``ca.crt`` are written there
    before anything is recorded, so a failed write records nothing. Raises ``InvalidAgentId`` for a name that
    cannot be a certificate CN, ``FileNotFoundError`` when the directory holds no CA.
    """
    certificate = issue_certificate(layout, agent_id)
    bundle = None if out_directory is None else write_agent_files(certificate, out_directory)
    issued = certificate.issued
    credential = add_certificate(
        agent_id, issued.fingerprint, normalize_serial(issued.serial), issued.not_valid_after, actor
    )
    return IssuedAgentCertificate(certificate, credential, bundle)


@dataclass(frozen=True)
class RevocationResult:
    serials: tuple[str, ...]
    newly_revoked: tuple[str, ...]
    credentials_revoked: tuple[int, ...]


def revoke_agent_certificates(
    layout: CaLayout, agent_id: str, actor: Actor, *, serial: str | None = None
) -> RevocationResult:
    """Revoke one (``serial``) or all known certificates of an agent: registry credential(s) and the CRL.

    Known certificates are those in the broker directory's ``issued/`` copies and the
    agent's certificate credentials in the registry. Raises ``ValueError`` for a serial
    of another agent, or when no certificate of the agent is known and no serial given.
    """
    credentials = list(
        AgentCredential.objects.filter(agent_id=agent_id, kind=CredentialKind.CERTIFICATE, revoked_at__isnull=True)
    )
    known = {normalize_serial(cert.serial_number): common_name(cert) for _, cert in issued_agent_certs(layout)}
    if serial is not None:
        wanted = normalize_serial(serial)
        owner = known.get(wanted)
        if owner is not None and owner != agent_id:
            raise ValueError(f"serial {wanted} belongs to {owner!r}, not {agent_id!r}")
        targets = [wanted]
    else:
        targets = [number for number, owner in known.items() if owner == agent_id]
        targets += [normalize_serial(c.cert_serial) for c in credentials if c.cert_serial]
        if not targets:
            raise ValueError(f"no certificate of {agent_id!r} is known here: pass --serial")
    targets = list(dict.fromkeys(targets))
    added = revoke_serials(layout, agent_id, targets)
    revoked_ids = []
    for credential in credentials:
        if serial is None or (credential.cert_serial and normalize_serial(credential.cert_serial) in targets):
            revoke_credential(credential.pk, actor)
            revoked_ids.append(credential.pk)
    return RevocationResult(tuple(targets), tuple(added), tuple(revoked_ids))
