"""Why a task is not running yet, or what happens next to one held by an agent, in words an operator can act on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Count

from registry.models import AdminState, Agent, Connectivity
from tasks.engine.claim import free_capacity, rate_tokens
from tasks.engine.targeting import Target, agent_matches
from tasks.models import HELD_STATES, Job, JobState, Task, TaskState
from tasks.outcomes import label

_SAMPLE = 5000  # agents examined for an 'any' task; enough to name the reason on any real fleet


@dataclass(frozen=True)
class Explanation:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def explain(task: Task, now: datetime) -> Explanation:
    if task.state in HELD_STATES:
        return _held(task, now)
    if task.state != TaskState.QUEUED:
        return Explanation(f"task_{task.state}", f"finished: {label(task.state)}")
    job = task.job
    if job.state == JobState.PAUSED:
        return Explanation("job_paused", f"waiting: job {job.pk} is paused")
    if job.state not in (JobState.SCHEDULED, JobState.RUNNING):
        return Explanation("job_closed", f"not running: job {job.pk} is {label(job.state)}")
    if task.not_before > now:
        why = "retry backoff" if task.attempt else "not-before time"
        return Explanation("not_before", f"waiting until {task.not_before.isoformat()} ({why})")
    limited = _rollout_limit(job, now)
    if limited:
        return limited
    if task.pinned:
        return _pinned(task, job)
    return _any(job)


def _clock(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC") if moment else "an unknown time"


def _after_lease(task: Task) -> str:
    """What lease expiry does to this task: requeue it while attempts are left, else end it timed out."""
    if task.cancel_requested_at is not None:
        return "the task ends canceled (a cancel is pending)"
    if task.attempt < task.max_attempts:
        return f"the task is requeued (attempt {task.attempt + 1} of {task.max_attempts})"
    return f"the task ends timed out (attempt {task.attempt} of {task.max_attempts} was its last)"


def _held(task: Task, now: datetime) -> Explanation:
    """Assigned or running: on which agent, and, when that agent is offline or draining, what happens next."""
    state = label(task.state)
    where = f"{state} on agent {task.agent_id} (attempt {task.attempt} of {task.max_attempts})"
    agent = Agent.objects.filter(pk=task.agent_id).first() if task.agent_id else None
    lease = task.lease_expires_at
    expired = lease is not None and lease <= now
    lease_text = (
        f"the lease expired at {_clock(lease)}; the dispatcher ends the attempt on its next pass, then"
        if expired
        else f"the lease expires at {_clock(lease)}, then"
    )
    if agent is not None and agent.connectivity != Connectivity.ONLINE:
        return Explanation(
            "held_by_offline_agent",
            f"{where}: agent {agent.pk} is offline since {_clock(agent.last_seen_at)}; "
            f"{lease_text} {_after_lease(task)}. The reconciliation page can end the attempt now.",
        )
    if agent is not None and agent.admin_state == AdminState.DRAINING:
        return Explanation(
            "held_by_draining_agent",
            f"{where}: agent {agent.pk} is draining, it finishes this task and takes no new one; "
            f"should it not, {lease_text} {_after_lease(task)}.",
        )
    if agent is not None and agent.admin_state == AdminState.DISABLED:
        return Explanation(
            "held_by_disabled_agent",
            f"{where}: agent {agent.pk} is disabled; {lease_text} {_after_lease(task)}.",
        )
    if lease is None:
        return Explanation(f"task_{task.state}", where)
    waiting = "accept" if task.state == TaskState.ASSIGNED else "report"
    return Explanation(
        f"task_{task.state}",
        f"{where}; should the agent not {waiting} in time, {lease_text} {_after_lease(task)}",
    )


def _rollout_limit(job: Job, now: datetime) -> Explanation | None:
    limit = job.in_flight_limit()
    if limit is not None:
        in_flight = Task.objects.filter(job_id=job.pk, state__in=HELD_STATES).count()
        if in_flight >= limit:
            return Explanation("rollout_in_flight", f"waiting: rollout limit, {in_flight} of {limit} tasks in flight")
    if job.rate_per_minute and rate_tokens(job, now) <= 0:
        return Explanation("rollout_rate", f"waiting: rollout rate of {job.rate_per_minute} per minute reached")
    return None


def _agent_blocker(agent: Agent, held: int | None = None) -> Explanation | None:
    """Why this agent can't take a task now; ``held``: its assigned+running count, when already known."""
    if agent.admin_state == AdminState.DISABLED:
        return Explanation("agent_disabled", f"waiting: agent {agent.pk} is disabled")
    if agent.admin_state == AdminState.DRAINING:
        return Explanation("agent_draining", f"waiting: agent {agent.pk} is draining")
    if agent.connectivity != Connectivity.ONLINE:
        return Explanation("agent_offline", f"waiting: agent {agent.pk} is offline")
    free = free_capacity(agent) if held is None else agent.max_concurrency - held
    if free <= 0:
        return Explanation(
            "agent_at_capacity", f"waiting: agent {agent.pk} is at capacity ({agent.max_concurrency} running)"
        )
    return None


def _pinned(task: Task, job: Job) -> Explanation:
    agent = Agent.objects.filter(pk=task.agent_id).first() if task.agent_id else None
    if agent is None:
        return Explanation("agent_missing", "stuck: the agent this task is pinned to no longer exists; cancel it")
    if not agent_matches(Target.of_job(job), agent):
        return Explanation(
            "agent_not_matching",
            f"waiting: agent {agent.pk} no longer matches the job's target{_describe(Target.of_job(job))}; "
            "it runs if the agent matches again, or cancel it",
        )
    return _agent_blocker(agent) or Explanation("ready", "ready: the dispatcher assigns it on its next pass")


def _any(job: Job) -> Explanation:
    target = Target.of_job(job)
    matching = [agent for agent in Agent.objects.order_by("pk")[:_SAMPLE] if agent_matches(target, agent)]
    if not matching:
        return Explanation("no_matching_agent", f"waiting: no agent matches the target{_describe(target)}")
    held = _held_counts([agent.pk for agent in matching if agent.connectivity == Connectivity.ONLINE])
    blockers = [_agent_blocker(agent, held.get(agent.pk, 0)) for agent in matching]
    if any(blocker is None for blocker in blockers):
        return Explanation("ready", "ready: the dispatcher assigns it on its next pass")
    codes = {blocker.code for blocker in blockers if blocker}
    if codes == {"agent_at_capacity"}:
        return Explanation("all_agents_at_capacity", f"waiting: all {len(matching)} matching agents are at capacity")
    if "agent_at_capacity" not in codes and "agent_offline" in codes and len(codes) == 1:
        return Explanation(
            "no_matching_agent_online", f"waiting: no online agent matches the target{_describe(target)}"
        )
    return Explanation(
        "no_available_agent",
        f"waiting: none of the {len(matching)} matching agents can take it ({', '.join(sorted(codes))})",
    )


def _held_counts(agent_ids: list[str]) -> dict[str, int]:
    """Assigned+running tasks per agent in one grouped query (index tasks(agent, state)), not one per agent."""
    if not agent_ids:
        return {}
    rows = (
        Task.objects.filter(agent_id__in=agent_ids, state__in=HELD_STATES)
        .values("agent_id")
        .annotate(n=Count("pk"))
        .values_list("agent_id", "n")
    )
    return dict(rows)


def _describe(target: Target) -> str:
    parts = []
    if target.capabilities:
        parts.append("capability " + ", ".join(target.capabilities))
    if target.labels:
        parts.append("labels " + ", ".join(f"{k}={v}" for k, v in target.labels.items()))
    if target.agent_ids:
        parts.append("agents " + ", ".join(list(target.agent_ids)[:5]))
    return f" ({'; '.join(parts)})" if parts else ""
