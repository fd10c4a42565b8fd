"""Leases: a held task whose lease ran out goes back to the queue or ends timed out.

The agent that held it is told to stop that attempt (a forced ``task.cancel``,
published after the commit like every server → agent message): otherwise it would
keep running the work, a second copy beside the retry, with its slot busy.
"""

from __future__ import annotations

from datetime import datetime

from broker import outbox
from broker.outbox import DirectSink
from tasks.engine import history
from tasks.engine.jobs import count_terminal, record_terminal, tell_failed
from tasks.engine.lifecycle import end_attempt, save_tasks
from tasks.models import HELD_STATES, TERMINAL_STATES, Job, Task, TaskEventKind, TaskState


def expire_leases(now: datetime, limit: int, sink: DirectSink | None = None) -> int:
    """Handle up to ``limit`` expired leases. Call inside a transaction. Returns how many were handled.

    ``sink``: the caller's own publisher for the cancels (the dispatcher's); ``None``: the bridge's job.
    """
    expired = list(
        Task.objects.filter(state__in=HELD_STATES, lease_expires_at__lt=now)
        .select_for_update(no_key=True, skip_locked=True)
        .order_by("lease_expires_at")[:limit]
    )
    if not expired:
        return 0
    jobs = Job.objects.in_bulk({task.job_id for task in expired})
    events, cancels = [], []
    for task in expired:
        previous = task.state
        if previous == TaskState.ASSIGNED:
            kind, error = (
                TaskEventKind.DELIVERY_TIMEOUT,
                {"code": "delivery_timeout", "message": "not accepted in time"},
            )
        else:
            kind, error = TaskEventKind.EXECUTION_TIMEOUT, {"code": "execution_timeout", "message": "lease expired"}
        agent_id, attempt = task.agent_id, task.attempt
        if agent_id is not None:
            cancels.append(outbox.to_inbox(agent_id, "task.cancel", now, task_id=task.pk, attempt=attempt, force=True))
        end_attempt(task, jobs[task.job_id], now, TaskState.TIMED_OUT, error)
        data: dict[str, object] = {"error": error}
        if task.state == TaskState.QUEUED:
            data["retry_at"] = task.not_before.isoformat()
        events.append(history.event(task.pk, kind, task.attempt, now, previous, task.state, agent_id, data=data))
    save_tasks(expired)
    history.write_events(events)
    outbox.write(cancels, sink)
    tell_failed(expired, now)
    record_terminal(count_terminal((t.job_id, t.state) for t in expired if t.state in TERMINAL_STATES), now)
    return len(expired)
