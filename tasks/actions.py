"""Every change of a job or task goes through these functions: one transaction each, history and audit included.

Views, the admin, the MQTT consumer and management commands parse input and call
these; nothing else writes queue rows.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction

from aegis_site.core import clock, wakeup
from aegis_site.core.audit import Actor, record
from aegis_site.core.db import atomic_with_retry
from aegis_site.core.errors import InvalidTransition, NotFound
from broker.outbox import DirectSink
from registry import actions as registry_actions
from registry.models import Agent, Transport
from tasks.engine import checks, control, expiry, logs, reconcile, reports, stuck, submit
from tasks.engine import claim as claim_engine
from tasks.engine.claim import Assignment
from tasks.engine.control import RetryAllowance
from tasks.engine.explain import Explanation, explain
from tasks.engine.jobs import cancel_tasks
from tasks.engine.preview import JobPreview
from tasks.engine.preview import build as build_preview
from tasks.engine.reconcile import Reconciliation
from tasks.engine.reports import Outcome, Report
from tasks.engine.submit import JobSpec
from tasks.engine.targeting import matching_agents
from tasks.models import HELD_STATES, Job, JobMode, JobState, Task, TaskState

log = logging.getLogger("aegis.tasks")


def submit_job(spec: JobSpec, actor: Actor) -> tuple[Job, bool]:
    """Create a job and its tasks, after the submit rules (``tasks.engine.checks``: ``SpecRefused``).

    With an idempotency key already used: that job and ``False`` when it was submitted
    with the same specification (its fingerprint), ``IdempotencyConflict`` when not.
    Jobs from before fingerprints were stored (an empty one) count as the same.
    """
    fingerprint = checks.fingerprint(spec)
    if spec.idempotency_key:
        existing = _same_request(spec, fingerprint)
        if existing is not None:
            return existing, False
    try:
        job = _create(spec, actor, fingerprint)
    except IntegrityError:
        existing = _same_request(spec, fingerprint) if spec.idempotency_key else None
        if existing is None:
            raise
        return existing, False
    log.info("job submitted", extra={"job_id": job.pk, "kind": job.kind, "tasks": job.tasks_total})
    return job, True


def _same_request(spec: JobSpec, fingerprint: str) -> Job | None:
    existing = Job.objects.filter(idempotency_key=spec.idempotency_key).first()
    if existing is not None and existing.spec_fingerprint and existing.spec_fingerprint != fingerprint:
        raise checks.IdempotencyConflict(spec.idempotency_key or "", existing.pk)
    return existing


@atomic_with_retry
def _create(spec: JobSpec, actor: Actor, fingerprint: str) -> Job:
    now = clock.now()
    agents = matching_agents(spec.target)
    checks.check_target(spec)
    submit.check_explicit_agents(spec)  # an unknown id is its own error, before "matches no agent"
    checks.enforce(spec, agents)
    job = submit.create_job(
        spec, actor.user_id, now, agents=agents if spec.mode == JobMode.EACH else None, fingerprint=fingerprint
    )
    record(actor, "job.submit", "job", job.pk, kind=job.kind, mode=job.mode, tasks=job.tasks_total)
    # Tasks pinned to agents named by id: the dispatcher claims for those agents first, without looking.
    wakeup.notify_on_commit(agents=job.target_agent_ids if job.mode == JobMode.EACH else ())
    return job


@atomic_with_retry
def claim_tasks(agent_id: str, limit: int, push: bool = False, sink: DirectSink | None = None) -> list[Assignment]:
    """Assign up to ``limit`` tasks to the agent (``push``: dispatcher mode, writes outbox messages).

    ``sink``: the caller's own publisher for those messages (``broker.outbox``); ``None``: the bridge's.
    """
    return claim_engine.claim_for(agent_id, limit, clock.now(), push=push, sink=sink)


def claim_over_http(agent: Agent, limit: int) -> list[Assignment]:
    """An agent's claim over HTTP: it becomes an HTTP agent, then claims up to ``limit`` tasks.

    The dispatcher pushes only to MQTT agents, so an agent that claims over HTTP is recorded so
    first (a conditional UPDATE, nothing written when it already is): its tasks no longer go to an
    MQTT inbox it does not read. The wait of a long poll is the transport's (``tasks.api.agent_views``).
    """
    if agent.transport != Transport.HTTP:
        registry_actions.use_transport(agent.pk, Transport.HTTP)
    return claim_tasks(agent.pk, limit)


def claim_for_agents(
    agent_ids: Collection[str], limit: int, sink: DirectSink | None = None, skip_busy: bool = False
) -> dict[str, list[Assignment]]:
    """The dispatcher's claim: up to ``limit`` tasks for each online agent, pushed; runs its own transactions.

    ``sink``: the dispatcher's own publisher (``broker.direct``), called with the assignments at the commit.
    ``skip_busy``: agents another transaction holds are left out of the result, not waited for.
    """
    return claim_engine.dispatch(agent_ids, limit, clock.now(), sink=sink, skip_busy=skip_busy)


@atomic_with_retry
def apply_reports(agent_id: str, batch: list[Report]) -> list[Outcome]:
    """Apply an agent's task events in one transaction (fenced by attempt, deduplicated by message id)."""
    return apply_agents_reports([(agent_id, item) for item in batch])


@atomic_with_retry
def apply_agents_reports(items: list[tuple[str, Report]]) -> list[Outcome]:
    """Apply ``(reporting agent, report)`` pairs from many agents in one transaction, in order.

    A task that ended or went back to the queue frees room on its agent, and in
    its job's rollout: the dispatcher is woken with those agents and the agents
    that can take the rollout's next tasks named, so the work goes out at once.
    """
    now = clock.now()
    outcomes = reports.apply_agents_reports(items, now)
    ended = [(agent_id, o.task_id) for (agent_id, _), o in zip(items, outcomes, strict=True) if _frees(o)]
    freed = {agent_id for agent_id, _ in ended} | reports.refill_hints([task_id for _, task_id in ended], now)
    if freed:
        wakeup.notify_on_commit(agents=freed)
    return outcomes


def _frees(outcome: Outcome) -> bool:
    return outcome.status == "applied" and outcome.state not in HELD_STATES


def report(agent_id: str, item: Report) -> Outcome:
    return apply_reports(agent_id, [item])[0]


@atomic_with_retry
def expire_leases(limit: int = 500, sink: DirectSink | None = None) -> int:
    """Handle up to ``limit`` expired leases; ``sink`` publishes their cancels at the commit (else the bridge)."""
    return expiry.expire_leases(clock.now(), limit, sink=sink)


@atomic_with_retry
def cancel_task(task_id: int, actor: Actor, force: bool = False) -> Task:
    task = control.cancel_task(task_id, force, actor.label, clock.now())
    record(actor, "task.cancel", "task", task_id, force=force, state=task.state)
    return task


@atomic_with_retry
def cancel_job(job_id: int, actor: Actor, force: bool = False) -> Job:
    job = control.cancel_job(job_id, force, actor.label, clock.now())
    record(actor, "job.cancel", "job", job_id, force=force)
    return job


@atomic_with_retry
def pause_job(job_id: int, actor: Actor) -> Job:
    job = control.pause_job(job_id, clock.now())
    record(actor, "job.pause", "job", job_id)
    return job


@atomic_with_retry
def resume_job(job_id: int, actor: Actor) -> Job:
    job = control.resume_job(job_id, clock.now())
    record(actor, "job.resume", "job", job_id)
    wakeup.notify_on_commit()
    return job


@atomic_with_retry
def retry_job_tasks(
    job_id: int, actor: Actor, task_ids: list[int] | None = None, reset_backoff: bool = False
) -> RetryAllowance:
    """Queue the job's failed and timed-out tasks (or the given subset of them) again; what they were given."""
    job = control.lock_job(job_id)
    if job.state == JobState.CANCELED:
        raise InvalidTransition(f"job {job_id} is canceled; clone it instead")
    allowance = control.retry_tasks(job, task_ids, actor.label, clock.now(), reset_backoff=reset_backoff)
    record(
        actor,
        "job.retry_failed",
        "job",
        job_id,
        tasks=allowance.retried,
        subset=task_ids,
        reset_backoff=reset_backoff,
        attempts=allowance.attempts_allowed,
    )
    wakeup.notify_on_commit()
    return allowance


def retry_failed(job_id: int, actor: Actor, task_ids: list[int] | None = None, reset_backoff: bool = False) -> int:
    """``retry_job_tasks``, answering how many tasks were queued again."""
    return retry_job_tasks(job_id, actor, task_ids, reset_backoff).retried


def preview_retry(job_id: int, reset_backoff: bool = False) -> RetryAllowance:
    """What ``retry_job_tasks(job_id)`` would give the job's failed tasks now, without writing."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return control.retry_allowance(job, list(control.retryable_tasks(job, None)), reset_backoff)


@atomic_with_retry
def retry_task_explained(task_id: int, actor: Actor, reset_backoff: bool = False) -> tuple[Task, RetryAllowance]:
    """Queue a failed, timed-out or canceled task again; the task and what the retry gave it."""
    task, allowance = control.retry_task(task_id, actor.label, clock.now(), reset_backoff=reset_backoff)
    record(actor, "task.retry", "task", task_id, reset_backoff=reset_backoff, attempts=allowance.attempts_allowed)
    wakeup.notify_on_commit()
    return task, allowance


def retry_task(task_id: int, actor: Actor, reset_backoff: bool = False) -> Task:
    return retry_task_explained(task_id, actor, reset_backoff)[0]


@atomic_with_retry
def end_held_attempt(task_id: int, attempt: int, actor: Actor) -> Task:
    """Reconciliation fix: end a held attempt whose agent is offline or whose lease ran out, as expiry would.

    The task goes back to the queue while attempts are left; ``attempt`` is the one the
    operator saw, so a task that moved on meanwhile is refused.
    """
    task, reason = stuck.end_held_attempt(task_id, attempt, actor.label, clock.now())
    record(actor, "task.end_attempt", "task", task_id, attempt=attempt, reason=reason, state=task.state)
    if task.state == TaskState.QUEUED:
        wakeup.notify_on_commit()
    return task


def explain_task(task_id: int) -> Explanation:
    task = Task.objects.select_related("job").filter(pk=task_id).first()
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return explain(task, clock.now())


def preview_job(spec: JobSpec) -> JobPreview:
    """What ``submit_job(spec)`` would create now, without writing anything (so nothing is audited either).

    Mode ``any`` lists the agents that could take its tasks at once (online and
    active), since those tasks are not pinned to the agents that match. The submit
    rules that depend on the fleet (no matching agent, the kind) are warnings here;
    an empty target without ``target_all`` is refused as on submit.
    """
    checks.check_target(spec)
    submit.check_explicit_agents(spec)
    matched = matching_agents(spec.target)
    warnings = checks.assess(spec, matched).warnings
    agents = [agent for agent in matched if agent.is_dispatchable] if spec.mode == JobMode.ANY else matched
    return build_preview(spec, [agent.pk for agent in agents], warnings)


def add_agent_to_continuous_jobs(agent: Agent) -> list[int]:
    """An agent appeared or changed labels/capabilities (registered, or said hello): its continuous jobs."""
    with transaction.atomic():
        added = submit.add_agent_to_continuous_jobs(agent, clock.now())
        if added:
            wakeup.notify_on_commit()
    return added


@atomic_with_retry
def reconcile_agent(
    agent_id: str, running: set[tuple[int, int]], finished: frozenset[tuple[int, int]] = frozenset()
) -> Reconciliation:
    """On an agent's hello: resend lost assignments, end attempts the agent lost, stop work that is not its own.

    ``finished``: attempts the agent has a result for that it has not seen acknowledged; they are left for it.
    """
    return reconcile.reconcile(agent_id, running, clock.now(), finished)


def agent_said_hello(
    agent_id: str,
    *,
    version: str,
    capabilities: list[str],
    labels: Mapping[str, str],
    max_concurrency: int,
    running: set[tuple[int, int]],
    finished: frozenset[tuple[int, int]] = frozenset(),
) -> Reconciliation:
    """One agent's hello (``agents_said_hello``). ``running`` and ``finished``: ``(task id, attempt)``."""
    facts = registry_actions.HelloFacts(agent_id, version, capabilities, labels, max_concurrency)
    return agents_said_hello([AgentHello(facts, running, finished)])[0]


@dataclass(frozen=True, slots=True)
class AgentHello:
    """A hello: what the agent says about itself, the attempts it runs, those it has a result for."""

    facts: registry_actions.HelloFacts
    running: set[tuple[int, int]]
    finished: frozenset[tuple[int, int]] = frozenset()


@atomic_with_retry
def agents_said_hello(hellos: list[AgentHello]) -> list[Reconciliation]:
    """Agents' hellos (one per agent), in one transaction: what each says about itself, what it holds, the
    work it may now take.

    The registry records the agents (created on first contact, marked online); their
    tasks are reconciled with what each reports running and finished; an agent whose
    labels or capabilities changed joins the continuous jobs it now matches; and the
    dispatcher is woken for them. Set-based: a batch of hellos costs a few statements, not a few per agent.
    """
    recorded = registry_actions.record_hellos([hello.facts for hello in hellos])
    holdings = {hello.facts.agent_id: (hello.running, hello.finished) for hello in hellos}
    results = reconcile.reconcile_agents(holdings, clock.now())
    for agent, offers_changed in recorded:
        if offers_changed:
            add_agent_to_continuous_jobs(agent)
    wakeup.notify_on_commit(agents=list(holdings))
    return [results[hello.facts.agent_id] for hello in hellos]


def release_tasks_of_removed_agent(agent_id: str, actor: Actor, at: datetime) -> int:
    """The agent is being removed (in the registry's transaction): what it held must not wait for it.

    Its open pinned tasks are canceled (forced: no other agent may run them); the unpinned
    tasks it held go back to the queue on the dispatcher's next lease sweep. Returns how
    many pinned tasks ended.
    """
    with transaction.atomic():
        Task.objects.filter(agent_id=agent_id, pinned=False, state__in=HELD_STATES).update(lease_expires_at=at)
        return cancel_tasks(
            Task.objects.filter(agent_id=agent_id, pinned=True),
            at,
            force=True,
            reason="agent removed",
            actor=actor.label,
        )


@atomic_with_retry
def store_task_output(chunks: list[logs.Chunk]) -> list[logs.ChunkStatus]:
    """Store chunks of task output from many agents in one transaction (fenced by attempt, capped, deduplicated).

    Takes no agent lock and no task lock: only the output summaries of the attempts written.
    """
    caps = logs.Caps(settings.TASK_LOG_MAX_BYTES_PER_ATTEMPT, settings.TASK_LOG_MAX_BYTES_PER_TASK)
    return logs.store_chunks(chunks, clock.now(), caps)
