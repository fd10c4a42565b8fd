"""The agent admin with what each agent works on: the registry's ``AgentAdmin`` plus its tasks.

The registry registers its agent admin without tasks (it imports no task); this module
extends it the way Django's docs extend ``UserAdmin``: a subclass, registered in its place.
It adds the running / capacity column (one grouped query for the page's agents, never one
per row), and to the detail page running / capacity, the current tasks and the recent task
events (the sections only for a viewer with ``tasks.view_task``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count
from django.http import HttpRequest
from django.utils.safestring import SafeString

from registry.admin import display
from registry.admin.agents import RECENT
from registry.admin.agents import AgentAdmin as RegistryAgentAdmin
from registry.models import Agent
from tasks.models import HELD_STATES, Task, TaskEvent


def held_task_counts(agent_ids: list[str]) -> dict[str, int]:
    """Assigned + running tasks per agent, for these agents only (``tasks_agent_state_idx``)."""
    if not agent_ids:
        return {}
    rows = (
        Task.objects.filter(agent_id__in=agent_ids, state__in=HELD_STATES)
        .order_by()
        .values("agent_id")
        .annotate(held=Count("id"))
        .values_list("agent_id", "held")[: len(agent_ids)]  # one row per agent at most: the LIMIT states the bound
    )
    return dict(rows)


class AgentChangeList(ChangeList):
    """Fills ``held_tasks`` on the page's agents with one query, after the page is cut (no aggregate over the table)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        agents = list(self.result_list)
        held = held_task_counts([agent.pk for agent in agents])
        for agent in agents:
            agent.held_tasks = held.get(agent.pk, 0)
        self.result_list = agents


class AgentAdmin(RegistryAgentAdmin):
    list_display = tuple("load" if column == "capacity" else column for column in RegistryAgentAdmin.list_display)
    change_form_template = "admin/tasks/agent/change_form.html"

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AgentChangeList

    @admin.display(description="running / capacity")
    def load(self, agent: Agent) -> SafeString:
        held = getattr(agent, "held_tasks", None)
        if held is None:  # outside the changelist (no page-wide count): ask for this agent alone
            held = held_task_counts([agent.pk]).get(agent.pk, 0)
        return display.load(held, agent.max_concurrency)

    def detail_context(self, request: HttpRequest, agent: Agent) -> dict[str, Any]:
        """The registry's sections, plus the agent's load (a count, shown to all) and its tasks.

        Current tasks and recent task events are read only for a viewer with ``tasks.view_task``
        (``None`` otherwise: the section is left out); then the load is their count, no extra query.
        """
        context = super().detail_context(request, agent)
        if request.user.has_perm("tasks.view_task"):
            current = list(Task.objects.filter(agent_id=agent.pk, state__in=HELD_STATES).order_by("id")[:100])
            context["current_tasks"] = current
            context["recent_events"] = list(TaskEvent.objects.filter(agent_id=agent.pk).order_by("-id")[:RECENT])
            held = len(current)
        else:
            context["current_tasks"] = context["recent_events"] = None
            held = held_task_counts([agent.pk]).get(agent.pk, 0)
        context["load"] = display.load(held, agent.max_concurrency)
        return context


admin.site.unregister(Agent)
admin.site.register(Agent, AgentAdmin)
