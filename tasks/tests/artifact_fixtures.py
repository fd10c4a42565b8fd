"""What the artifact tests share: an agent with its token, a task it runs, bytes with their digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aegis_site.core import clock
from aegis_site.core.audit import Actor
from registry import actions as registry_actions
from registry.models import Agent
from tasks.models import Job, Task, TaskState


@dataclass(frozen=True)
class Running:
    agent_id: str
    token: str
    task: Task


def agent_with_token(agent_id: str) -> str:
    if not Agent.objects.filter(pk=agent_id).exists():
        Agent.objects.create(pk=agent_id, max_concurrency=4)
    _credential, token = registry_actions.issue_token(agent_id, Actor("tester"))
    return token


def running_task(agent_id: str, attempt: int = 1) -> Running:
    """A task the agent runs now (attempt ``attempt``), as after a claim and an ``accepted`` report."""
    token = agent_with_token(agent_id)
    job = Job.objects.create(kind="build", state="running")
    task = Task.objects.create(
        job=job,
        agent_id=agent_id,
        kind="build",
        state=TaskState.RUNNING,
        attempt=attempt,
        not_before=clock.now(),
        assigned_at=clock.now(),
        started_at=clock.now(),
    )
    return Running(agent_id, token, task)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
