"""The tasks side of the registry's changes (``registry.signals``): one action call each.

Connected in ``TasksConfig.ready()``; they run inside the registry action's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aegis_site.core.audit import Actor
from registry.models import Agent
from tasks import actions


def add_to_continuous_jobs(sender: type[Agent], *, agent: Agent, created: bool, **kwargs: Any) -> None:
    """``agent_registered``: a new or changed agent gets a task in each open continuous job it now matches."""
    actions.add_agent_to_continuous_jobs(agent)


def release_tasks_of_removed_agent(
    sender: type[Agent], *, agent_id: str, actor: Actor, at: datetime, **kwargs: Any
) -> None:
    """``agent_removing``: its pinned tasks are canceled, the unpinned ones it held go back to the queue."""
    actions.release_tasks_of_removed_agent(agent_id, actor, at)
