"""The audit trail: one append-only row per operator action."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aegis_site.core.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who acts: an operator (with a user id), an agent, or a system role."""

    label: str
    user_id: int | None = None

    @classmethod
    def of_user(cls, user: Any) -> Actor:
        return cls(label=user.get_username(), user_id=user.pk)

    @classmethod
    def system(cls, role: str) -> Actor:
        return cls(label=f"system:{role}")

    @classmethod
    def agent(cls, agent_id: str) -> Actor:
        return cls(label=f"agent:{agent_id}")


def entry(actor: Actor, action: str, object_type: str, object_id: object, **data: Any) -> AuditEvent:
    """An audit row not yet saved: ``record_all`` writes many in one statement."""
    return AuditEvent(
        actor_id=actor.user_id,
        actor_label=actor.label,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        data=data,
    )


def record(actor: Actor, action: str, object_type: str, object_id: object, **data: Any) -> AuditEvent:
    event = entry(actor, action, object_type, object_id, **data)
    event.save(force_insert=True)
    return event


def record_all(events: list[AuditEvent]) -> None:
    AuditEvent.objects.bulk_create(events)
