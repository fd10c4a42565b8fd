"""Fixtures the tasks tests share (the project's root conftest.py has the agents, specs and operator)."""

from __future__ import annotations

from typing import Any

import pytest

from tasks import actions
from tasks.models import Task


@pytest.fixture
def running(make_agent: Any, spec: Any, operator: Any) -> Task:
    """A task of one job, claimed by agent a1 (attempt 1)."""
    make_agent("a1")
    actions.submit_job(spec(target_agent_ids=["a1"]), operator)
    (assignment,) = actions.claim_tasks("a1", 10)
    return Task.objects.get(pk=assignment.task_id)
