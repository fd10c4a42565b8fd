"""What the task page shows besides its fields: the explanation, its data as JSON, the history as a timeline,
and what the output's live tail starts from (the attempts that have output; the tail itself is a websocket,
``tasks.live.output_tail``, rendered by ``tasks/static/tasks/output_tail.js``).

The page costs the same few queries whatever the history holds: one for the events
(the latest ``TIMELINE_LIMIT`` of them), one for the explanation's own look-ups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aegis_site.core import clock
from aegis_site.core.errors import NotFound
from tasks import actions
from tasks.admin.task_display import attempt_reasons, duration_text
from tasks.engine.control import RETRYABLE_STATES
from tasks.models import HELD_STATES, TERMINAL_STATES, JobState, Task, TaskEvent, TaskLogAttempt, TaskState
from tasks.outcomes import label

TIMELINE_LIMIT = 200  # a task reporting progress every second would otherwise fill the page with history


def pretty(value: Any) -> str:
    """Indented JSON, keys in the order they were stored; '' for no value."""
    if value is None:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Controls:
    """Which buttons the task's state allows (the actions refuse the others anyway)."""

    cancel: bool
    force_cancel: bool
    retry: bool

    @classmethod
    def of(cls, task: Task) -> Controls:
        return cls(
            cancel=task.state not in TERMINAL_STATES and task.cancel_requested_at is None,
            force_cancel=task.state in HELD_STATES,
            retry=task.state in (*RETRYABLE_STATES, TaskState.CANCELED) and task.job.state != JobState.CANCELED,
        )

    @property
    def any(self) -> bool:
        return self.cancel or self.force_cancel or self.retry


@dataclass(frozen=True)
class TimelineEntry:
    event: TaskEvent
    data: str

    @property
    def transition(self) -> str:
        event = self.event
        if event.from_state and event.to_state and event.from_state != event.to_state:
            return f"{label(event.from_state)} → {label(event.to_state)}"
        return label(event.to_state or event.from_state) if (event.to_state or event.from_state) else ""


def timeline(task_id: int) -> tuple[list[TimelineEntry], bool]:
    """The latest events in the order they happened, and whether older ones were left out."""
    latest = list(TaskEvent.objects.filter(task_id=task_id).order_by("-id")[: TIMELINE_LIMIT + 1])
    truncated = len(latest) > TIMELINE_LIMIT
    entries = [TimelineEntry(event, pretty(event.data)) for event in reversed(latest[:TIMELINE_LIMIT])]
    return entries, truncated


def output_attempts(task: Task) -> list[int]:
    """The attempts with output, and the current one (its output may start any moment), oldest first."""
    attempts = set(TaskLogAttempt.objects.filter(task_id=task.pk).values_list("attempt", flat=True))
    return sorted(attempts | {task.attempt} if task.attempt else attempts)


def context(task: Task) -> dict[str, Any]:
    """Template context for the task page (``task.job`` already loaded)."""
    try:
        explanation = actions.explain_task(task.pk)
    except NotFound:
        explanation = None
    entries, truncated = timeline(task.pk)
    return {
        "explanation": explanation,
        "state_label": label(task.state),
        "attempt_reason": attempt_reasons([task])[task.pk].text,
        "duration": duration_text(task, clock.now()),
        "controls": Controls.of(task),
        "payload_json": pretty(task.job.payload),
        "progress_json": pretty(task.progress),
        "result_json": pretty(task.result),
        "error_json": pretty(task.error),
        "timeline": entries,
        "timeline_truncated": truncated,
        "timeline_limit": TIMELINE_LIMIT,
        "output_attempts": output_attempts(task),
    }
