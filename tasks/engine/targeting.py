"""Which agents a job's target selects. Pure functions over plain values, so claims, previews and tests share them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.models import AdminState, Agent


@dataclass(frozen=True)
class Target:
    agent_ids: Sequence[str] = ()
    labels: Mapping[str, Any] = ()  # type: ignore[assignment]
    capabilities: Sequence[str] = ()

    @classmethod
    def of_job(cls, job: Any) -> Target:
        return cls(job.target_agent_ids or (), job.target_labels or {}, job.target_capabilities or ())


def labels_match(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Every selector key must be present; a list value means 'any of these'."""
    for key, wanted in selector.items():
        have = labels.get(key)
        if have is None:
            return False
        if isinstance(wanted, list):
            if have not in wanted:
                return False
        elif have != wanted:
            return False
    return True


def matches(target: Target, agent_id: str, labels: Mapping[str, Any], capabilities: Iterable[str]) -> bool:
    if target.agent_ids and agent_id not in target.agent_ids:
        return False
    if target.labels and not labels_match(target.labels, labels or {}):
        return False
    return not target.capabilities or set(target.capabilities) <= set(capabilities or ())


def agent_matches(target: Target, agent: Agent) -> bool:
    return matches(target, agent.id, agent.labels, agent.capabilities)


def matching_agents(target: Target, include_disabled: bool = False) -> list[Agent]:
    """Agents the target selects, in id order. Narrowed in SQL by id where possible, then checked exactly."""
    agents = Agent.objects.only("id", "labels", "capabilities", "admin_state", "connectivity", "max_concurrency")
    if target.agent_ids:
        agents = agents.filter(id__in=list(target.agent_ids))
    if not include_disabled:
        agents = agents.exclude(admin_state=AdminState.DISABLED)
    return [agent for agent in agents.order_by("id").iterator(chunk_size=2000) if agent_matches(target, agent)]
