"""The ``data`` of each event type (docs/notifications.md shows each one whole): small dicts of plain values.

Times are RFC 3339 in UTC (``…Z``); ids are those of the API. What a receiver needs to
act on the event is here; anything more it reads from the API by these ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notify.outbox import rfc3339
from registry.models import Agent
from tasks.models import Job


def when(at: datetime | None) -> str | None:
    return rfc3339(at) if at is not None else None


def job_ref(job: Job) -> dict[str, Any]:
    """The job as ``task.failed`` names it (the same shape in a digest)."""
    return {"id": job.pk, "kind": job.kind, "state": job.state}


def job_summary(job: Job) -> dict[str, Any]:
    """The job events' ``job``: what it is, where it stands, and its task counts."""
    return {
        "id": job.pk,
        "kind": job.kind,
        "state": job.state,
        "mode": job.mode,
        "counts": {
            "total": job.tasks_total,
            "succeeded": job.tasks_succeeded,
            "failed": job.tasks_failed,  # timed-out tasks included, as the job's own counter
            "canceled": job.tasks_canceled,
        },
        "created_at": when(job.created_at),
        "finished_at": when(job.finished_at),
    }


def job_event(job: Job, **more: Any) -> dict[str, Any]:
    return {"job": job_summary(job), **more}


def failed_task(
    job: Job,
    *,
    task_id: int,
    attempt: int,
    agent_id: str | None,
    state: str,
    error: dict[str, Any] | None,
    at: datetime,
) -> dict[str, Any]:
    """``task.failed`` for one task: always a list, so a digest of several has the same shape."""
    error = error or {}
    return {
        "job": job_ref(job),
        "tasks": [
            {
                "id": task_id,
                "attempt": attempt,
                "agent_id": agent_id,
                "state": state,
                "error": {"code": str(error.get("code", "")), "message": str(error.get("message", ""))},
                "finished_at": rfc3339(at),
            }
        ],
        "count": 1,
    }


def agent_ref(agent: Agent | None, agent_id: str) -> dict[str, Any]:
    """An agent as the agent events name it (``None`` fields for one already removed)."""
    if agent is None:
        return {"id": agent_id, "name": None, "labels": {}, "admin_state": None, "connectivity": None}
    return {
        "id": agent.pk,
        "name": agent.name,
        "labels": agent.labels or {},
        "admin_state": agent.admin_state,
        "connectivity": agent.connectivity,
    }
