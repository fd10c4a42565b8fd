"""What a task row shows besides its state: how long it waited and ran, its result or error, why this attempt.

Shared by the task list and the job page's task table. Duration, result and error come
from the task row itself; the attempt's reason from the task history, read for a whole
page of tasks in one query (the latest attempt-ending event of each, on the
``(task, id)`` index of ``task_events``), never one query per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, Max, Q
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tasks.models import HELD_STATES, TERMINAL_STATES, Task, TaskEvent, TaskEventKind, TaskState

SUMMARY_CHARS = 60  # shown in the row
FULL_CHARS = 2000  # in the hover title; the task page shows all of it

# History kinds that end an attempt and let the task run again (or record an operator's retry).
REASON_KINDS = (
    TaskEventKind.FAILED,
    TaskEventKind.REJECTED,
    TaskEventKind.DELIVERY_TIMEOUT,
    TaskEventKind.EXECUTION_TIMEOUT,
    TaskEventKind.AGENT_LOST,
    TaskEventKind.RETRIED,
)
REASONS: dict[str, str] = {
    TaskEventKind.FAILED: "retried after failure",
    TaskEventKind.REJECTED: "retried after the agent rejected it",
    TaskEventKind.DELIVERY_TIMEOUT: "retried after delivery timeout",
    TaskEventKind.EXECUTION_TIMEOUT: "retried after execution timeout",
    TaskEventKind.AGENT_LOST: "retried: lease lost (agent offline)",
}


def seconds_text(seconds: float) -> str:
    """'2.1 s', '3 min 4 s', '2 h 5 min': precise where it matters, short where it does not."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def duration_text(task: Task, now: datetime) -> str:
    """Queued -> started -> finished: 'waited 2.1 s, ran 3.4 s'.

    "Waited" runs from the task's creation to the start of its latest attempt (earlier
    attempts included); "ran" from that start to the end (or now, while it runs).
    """
    started = task.started_at
    if started is None:
        if task.state in TERMINAL_STATES and task.finished_at is not None:
            return f"waited {seconds_text((task.finished_at - task.created_at).total_seconds())}, never started"
        verb = "waiting" if task.state == TaskState.QUEUED else "waited"
        until = task.assigned_at if task.state == TaskState.ASSIGNED and task.assigned_at else now
        tail = ", not started yet" if task.state == TaskState.ASSIGNED else ""
        return f"{verb} {seconds_text((until - task.created_at).total_seconds())}{tail}"
    waited = f"waited {seconds_text((started - task.created_at).total_seconds())}"
    if task.state in HELD_STATES:
        return f"{waited}, running {seconds_text((now - started).total_seconds())}"
    if task.finished_at is not None:
        return f"{waited}, ran {seconds_text((task.finished_at - started).total_seconds())}"
    return waited  # queued again after an attempt that started: the next attempt has not


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def outcome_text(task: Task) -> tuple[str, str]:
    """('error' | 'result' | '', the full text): an error's 'code: message', else the result as JSON."""
    error = task.error
    if error:
        if isinstance(error, dict) and (error.get("code") or error.get("message")):
            code, message = error.get("code") or "", error.get("message") or ""
            return "error", f"{code}: {message}" if code and message else str(code or message)
        return "error", _compact(error)
    if task.result is not None and task.state == TaskState.SUCCEEDED:
        return "result", _compact(task.result)
    return "", ""


def outcome_summary(task: Task) -> SafeString | str:
    """The result or error, cut to ``SUMMARY_CHARS``; the whole (up to ``FULL_CHARS``) in the title."""
    kind, text = outcome_text(task)
    if not kind:
        return "-"
    short = text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"
    full = text if len(text) <= FULL_CHARS else text[: FULL_CHARS - 1] + "…"
    return format_html('<span class="task-outcome task-outcome-{}" title="{}">{}</span>', kind, full, short)


@dataclass(frozen=True)
class AttemptReason:
    text: str
    event_kind: str = ""


FIRST = AttemptReason("first attempt")


def _reason_of(event: TaskEvent) -> AttemptReason:
    if event.kind == TaskEventKind.RETRIED:
        by = (event.data or {}).get("by") if isinstance(event.data, dict) else None
        who = by.get("label") if isinstance(by, dict) else by
        return AttemptReason(f"retried by {who}" if who else "retried by an operator", event.kind)
    return AttemptReason(REASONS.get(event.kind, f"retried after {event.kind}"), event.kind)


def attempt_reasons(tasks: Iterable[Task]) -> dict[int, AttemptReason]:
    """Why each task is on its current attempt (or, queued again, why it will run again). One query.

    The reason is the latest history event that ended an earlier attempt or retried the task:
    an event of an attempt before the current one, or of the current one while the task is
    queued again. A task without one is on its first attempt.
    """
    tasks = list(tasks)
    ids = [task.pk for task in tasks]
    if not ids:
        return {}
    earlier = Q(attempt__lt=F("task__attempt")) | Q(task__state=TaskState.QUEUED)
    latest = (
        TaskEvent.objects.filter(task_id__in=ids, kind__in=REASON_KINDS)
        .filter(earlier)
        .order_by()
        .values("task_id")
        .annotate(last=Max("id"))
        .values("last")
    )
    events = TaskEvent.objects.filter(pk__in=latest).only("id", "task_id", "kind", "attempt", "data")
    found = {event.task_id: _reason_of(event) for event in events}
    return {task.pk: found.get(task.pk, FIRST) for task in tasks}


def attempt_html(task: Task, reason: AttemptReason | None) -> SafeString:
    """'2/3' and, under it, why: 'retried after execution timeout'."""
    reason = reason or FIRST
    return format_html(
        '<span class="task-attempt">{}/{}</span><br><span class="task-attempt-reason" data-reason="{}">{}</span>',
        task.attempt,
        task.max_attempts,
        reason.event_kind or "first",
        reason.text,
    )
