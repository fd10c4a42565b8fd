"""Turning a job specification into a job and its tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from aegis_site.core.errors import InvalidTarget
from registry.models import AdminState, Agent
from tasks.engine import history
from tasks.engine.jobs import settle
from tasks.engine.targeting import Target, agent_matches, matching_agents
from tasks.models import OPEN_JOB_STATES, Job, JobMode, Task, TaskEventKind, TaskState

_CREATE_BATCH = 2000


def _default(name: str) -> Any:
    return field(default_factory=lambda: getattr(settings, name))


@dataclass
class JobSpec:
    """Everything a submitter chooses about a job. Validated at the edge (serializer, form)."""

    kind: str
    payload: Any = field(default_factory=dict)
    target_agent_ids: list[str] = field(default_factory=list)
    target_labels: dict[str, Any] = field(default_factory=dict)
    target_capabilities: list[str] = field(default_factory=list)
    mode: str = JobMode.EACH
    task_count: int = 1
    continuous: bool = False
    priority: int = 0
    max_attempts: int = _default("TASK_DEFAULT_MAX_ATTEMPTS")
    backoff_base_s: float = _default("TASK_DEFAULT_BACKOFF_BASE")
    backoff_cap_s: float = _default("TASK_DEFAULT_BACKOFF_CAP")
    delivery_timeout_s: int = _default("TASK_DEFAULT_DELIVERY_TIMEOUT")
    execution_timeout_s: int = _default("TASK_DEFAULT_EXECUTION_TIMEOUT")
    not_before: datetime | None = None
    idempotency_key: str | None = None
    max_in_flight: int | None = None
    max_in_flight_percent: int | None = None
    rate_per_minute: int | None = None
    abort_failure_ratio: float | None = None
    abort_min_finished: int = 1
    # Every agent of the fleet, on purpose: an empty target is refused without it (``tasks.engine.checks``).
    target_all: bool = False
    # The submitter's answers to the checks (not part of the job): launch although the target matches no
    # agent now, or although matched agents do not offer the kind.
    allow_no_agents: bool = False
    allow_unsupported_kind: bool = False

    @property
    def target(self) -> Target:
        return Target(self.target_agent_ids, self.target_labels, self.target_capabilities)

    @property
    def untargeted(self) -> bool:
        return not (self.target_agent_ids or self.target_labels or self.target_capabilities)


def check_explicit_agents(spec: JobSpec) -> None:
    if not spec.target_agent_ids:
        return
    known = set(Agent.objects.filter(pk__in=spec.target_agent_ids).values_list("pk", flat=True))
    unknown = sorted(set(spec.target_agent_ids) - known)
    if unknown:
        raise InvalidTarget(f"unknown agent ids: {', '.join(unknown[:20])}")


def create_job(
    spec: JobSpec,
    created_by_id: int | None,
    now: datetime,
    agents: list[Agent] | None = None,
    fingerprint: str = "",
) -> Job:
    """Create the job row and materialise its tasks. Call inside a transaction.

    ``agents``: the target's agents when the caller looked them up already (``matching_agents``).
    The submit rules (``tasks.engine.checks``) are the action's; this only builds what it is given.
    """
    check_explicit_agents(spec)
    job = Job.objects.create(
        kind=spec.kind,
        payload=spec.payload,
        target_agent_ids=list(spec.target_agent_ids),
        target_labels=dict(spec.target_labels),
        target_capabilities=list(spec.target_capabilities),
        mode=spec.mode,
        task_count=spec.task_count if spec.mode == JobMode.ANY else 0,
        continuous=spec.continuous and spec.mode == JobMode.EACH,
        target_all=spec.target_all,
        spec_fingerprint=fingerprint,
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        backoff_base_s=spec.backoff_base_s,
        backoff_cap_s=spec.backoff_cap_s,
        delivery_timeout_s=spec.delivery_timeout_s,
        execution_timeout_s=spec.execution_timeout_s,
        not_before=spec.not_before,
        idempotency_key=spec.idempotency_key or None,
        max_in_flight=spec.max_in_flight,
        max_in_flight_percent=spec.max_in_flight_percent,
        rate_per_minute=spec.rate_per_minute,
        abort_failure_ratio=spec.abort_failure_ratio,
        abort_min_finished=spec.abort_min_finished,
        created_by_id=created_by_id,
    )
    agent_ids: list[str | None]
    if spec.mode == JobMode.EACH:
        agent_ids = [agent.pk for agent in (matching_agents(spec.target) if agents is None else agents)]
    else:
        agent_ids = [None] * spec.task_count
    add_tasks(job, agent_ids, now)
    if not job.tasks_total:
        settle(job, now)
    return job


def add_tasks(job: Job, agent_ids: list[str | None], now: datetime) -> int:
    """Queue one task per entry: pinned to that agent, or claimable by any (``None``)."""
    not_before = max(job.not_before or now, now)
    created = 0
    for start in range(0, len(agent_ids), _CREATE_BATCH):
        chunk = agent_ids[start : start + _CREATE_BATCH]
        tasks = Task.objects.bulk_create(
            [
                Task(
                    job=job,
                    agent_id=agent_id,
                    pinned=agent_id is not None,
                    kind=job.kind,
                    priority=job.priority,
                    max_attempts=job.max_attempts,
                    not_before=not_before,
                )
                for agent_id in chunk
            ]
        )
        history.write_events(
            [
                history.event(task.pk, TaskEventKind.CREATED, 0, now, "", TaskState.QUEUED, task.agent_id)
                for task in tasks
            ]
        )
        created += len(tasks)
    if created:
        job.tasks_total += created
        Job.objects.filter(pk=job.pk).update(tasks_total=job.tasks_total, finished_at=None, updated_at=now)
    return created


def add_agent_to_continuous_jobs(agent: Agent, now: datetime) -> list[int]:
    """Give a newly matching agent a task in every open continuous job it has none in. Returns job ids."""
    if agent.admin_state == AdminState.DISABLED:
        return []
    jobs = Job.objects.select_for_update(no_key=True).filter(
        continuous=True, mode=JobMode.EACH, state__in=OPEN_JOB_STATES
    )
    added = []
    for job in jobs.order_by("pk"):
        if not agent_matches(Target.of_job(job), agent):
            continue
        if Task.objects.filter(job_id=job.pk, agent_id=agent.pk).exists():
            continue
        add_tasks(job, [agent.pk], now)
        added.append(job.pk)
    return added
