"""Signal receivers that write notification events in the transaction of their cause.

The task engine (``tasks.signals``) and the registry (``registry.signals``) send their
signals inside the transaction of the change; each receiver here is one ``outbox.emit``
with the event's key (what makes it once, docs/notifications.md) and its payload
(``notify.payloads``). Connected in ``NotifyConfig.ready()`` with a ``dispatch_uid``;
the signals' docstrings name them (their tests hold the two together).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from notify import payloads, retention
from notify.models import EventType
from notify.outbox import emit, listening, rfc3339
from registry import signals as registry_signals
from registry.models import AdminState, Agent
from tasks import signals as task_signals
from tasks.models import Job


def _job(job_id: int) -> Job:
    return Job.objects.get(pk=job_id)


def job_started(sender: type[Job], *, job_id: int, at: datetime, **kwargs: Any) -> None:
    """``job_started``: ``job.started:<job>`` (a job starts once: scheduled comes before any assignment)."""
    if not (candidates := listening(EventType.JOB_STARTED)):
        return
    job = _job(job_id)
    data = payloads.job_event(job, started_at=rfc3339(at))
    key = f"job.started:{job_id}"
    emit(EventType.JOB_STARTED, key, data, at, job_id=job_id, job_kind=job.kind, candidates=candidates)


def job_finished(sender: type[Job], *, job_id: int, state: str, at: datetime, **kwargs: Any) -> None:
    """``job_finished``: ``job.finished:<job>:<finished_at>`` (a retried job that ends again is a new end)."""
    if not (candidates := listening(EventType.JOB_FINISHED)):
        return
    job = _job(job_id)
    data = payloads.job_event(job, outcome=state)
    key = f"job.finished:{job_id}:{rfc3339(at)}"
    emit(EventType.JOB_FINISHED, key, data, at, job_id=job_id, job_kind=job.kind, candidates=candidates)


def job_paused(sender: type[Job], *, job_id: int, at: datetime, **kwargs: Any) -> None:
    """``job_paused``: ``job.paused:<job>:<at>`` (each pause is a cause of its own)."""
    if not (candidates := listening(EventType.JOB_PAUSED)):
        return
    job = _job(job_id)
    key = f"job.paused:{job_id}:{rfc3339(at)}"
    data = payloads.job_event(job)
    emit(EventType.JOB_PAUSED, key, data, at, job_id=job_id, job_kind=job.kind, candidates=candidates)


def job_aborted(sender: type[Job], *, job_id: int, at: datetime, **kwargs: Any) -> None:
    """``job_aborted``: ``job.aborted:<job>:<at>`` (a retried job may cross its threshold again)."""
    if not (candidates := listening(EventType.JOB_ABORTED)):
        return
    job = _job(job_id)
    data = payloads.job_event(
        job,
        reason="failure threshold",
        abort_failure_ratio=job.abort_failure_ratio,
        abort_min_finished=job.abort_min_finished,
    )
    key = f"job.aborted:{job_id}:{rfc3339(at)}"
    emit(EventType.JOB_ABORTED, key, data, at, job_id=job_id, job_kind=job.kind, candidates=candidates)


def task_failed(
    sender: Any,
    *,
    task_id: int,
    job_id: int,
    attempt: int,
    agent_id: str | None,
    state: str,
    error: dict[str, Any] | None,
    at: datetime,
    **kwargs: Any,
) -> None:
    """``task_failed``: ``task.failed:<task>:<attempt>``; the agent's labels feed the subscriptions' filter."""
    if not (candidates := listening(EventType.TASK_FAILED)):
        return
    job = Job.objects.only("pk", "kind", "state").get(pk=job_id)
    data = payloads.failed_task(
        job, task_id=task_id, attempt=attempt, agent_id=agent_id, state=state, error=error, at=at
    )
    labels = _labels(agent_id) if agent_id else {}
    key = f"task.failed:{task_id}:{attempt}"
    emit(
        EventType.TASK_FAILED,
        key,
        data,
        at,
        job_id=job_id,
        job_kind=job.kind,
        agent_labels=labels,
        candidates=candidates,
    )


def agent_connectivity_changed(
    sender: type[Agent], *, agent_id: str, online: bool, at: datetime, reason: str, **kwargs: Any
) -> None:
    """``agent_connectivity_changed``: ``agent.online:<agent>:<at>`` or ``agent.offline:<agent>:<at>``."""
    event_type = EventType.AGENT_ONLINE if online else EventType.AGENT_OFFLINE
    if not (candidates := listening(event_type)):
        return
    agent = Agent.objects.filter(pk=agent_id).first()
    data: dict[str, Any] = {"agent": payloads.agent_ref(agent, agent_id), "at": rfc3339(at)}
    if not online:
        data["reason"] = reason
        data["last_seen_at"] = payloads.when(agent.last_seen_at) if agent is not None else None
    key = f"{event_type}:{agent_id}:{rfc3339(at)}"
    labels = (agent.labels or {}) if agent is not None else {}
    emit(event_type, key, data, at, agent_labels=labels, candidates=candidates)


def agent_disabled(
    sender: type[Agent], *, agent_id: str, previous: str, state: str, at: datetime, **kwargs: Any
) -> None:
    """``admin_state_changed`` to disabled: ``agent.disabled:<agent>:<at>``; other changes notify nothing."""
    if state != AdminState.DISABLED or not (candidates := listening(EventType.AGENT_DISABLED)):
        return
    agent = Agent.objects.filter(pk=agent_id).first()
    data = {"agent": payloads.agent_ref(agent, agent_id), "previous": previous, "at": rfc3339(at)}
    key = f"agent.disabled:{agent_id}:{rfc3339(at)}"
    labels = (agent.labels or {}) if agent is not None else {}
    emit(EventType.AGENT_DISABLED, key, data, at, agent_labels=labels, candidates=candidates)


def _labels(agent_id: str) -> dict[str, Any]:
    return Agent.objects.filter(pk=agent_id).values_list("labels", flat=True).first() or {}


def prune_notifications(sender: Any, *, cutoff: datetime, batch_size: int, dry_run: bool, **_: Any) -> dict[str, int]:
    """``manage.py prune``: old events whose deliveries all ended (``notify.retention``)."""
    return retention.prune(cutoff, batch_size, dry_run)


def connect() -> None:
    """Connect every receiver (``NotifyConfig.ready``), each under its own dotted name."""
    for signal, receiver in (
        (task_signals.job_started, job_started),
        (task_signals.job_finished, job_finished),
        (task_signals.job_paused, job_paused),
        (task_signals.job_aborted, job_aborted),
        (task_signals.task_failed, task_failed),
        (registry_signals.agent_connectivity_changed, agent_connectivity_changed),
        (registry_signals.admin_state_changed, agent_disabled),
        (task_signals.pruning, prune_notifications),
    ):
        signal.connect(receiver, dispatch_uid=f"{receiver.__module__}.{receiver.__qualname__}")
