"""Jobs and tasks over HTTP: the job specification is validated here, so the actions can trust it."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings
from django.db.models import Count
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from broker.protocol import MAX_CAPABILITIES, MAX_CAPABILITY_CHARS, MAX_DEPTH, MAX_LABEL_KEY_CHARS, MAX_MESSAGE_BYTES
from registry.models import AGENT_ID_PATTERN
from tasks.engine.preview import PACED_BY
from tasks.engine.submit import JobSpec
from tasks.models import Job, JobMode, Task, TaskEvent, TaskState

KIND_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
# The payload travels inside a task.assign message, which must stay under the broker's limit.
MAX_PAYLOAD_BYTES = MAX_MESSAGE_BYTES - 4 * 1024
MAX_PAYLOAD_DEPTH = MAX_DEPTH - 2  # the envelope and its "task" object sit above the payload
MAX_TASKS = 100_000
MAX_TARGET_AGENTS = 100_000
MAX_LABEL_SELECTORS = 64
MAX_LABEL_CHOICES = 1_000
MAX_LABEL_VALUE_CHARS = 255
MAX_TIMEOUT_S = 30 * 86_400
MAX_BACKOFF_S = 7 * 86_400
MAX_ROLLOUT = 1_000_000
MAX_ID = 2**63 - 1
MAX_EVENTS = 500  # a task's history in its detail; a task that flaps for days can have thousands
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL stores neither NUL nor lone surrogates


def check_json_tree(value: Any, max_depth: int) -> None:
    """Refuse what the database or the wire cannot carry: NUL, lone surrogates, infinite numbers, deep nesting."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _BAD_CHARS.search(item):
                raise serializers.ValidationError("Text may not hold NUL characters or lone surrogates.")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise serializers.ValidationError("Numbers must be finite.")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise serializers.ValidationError(f"Nested deeper than {max_depth} levels.")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                {"type": "string"},
                {"type": "integer"},
                {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
            ]
        },
    }
)
class LabelSelectorField(serializers.Field):
    """``{key: value | [values]}``: every key must be present on the agent, a list means any of these values."""

    default_error_messages = {
        "not_object": "Expected an object of label keys to values.",
        "too_many": f"At most {MAX_LABEL_SELECTORS} labels.",
        "bad_key": f"Label keys are 1-{MAX_LABEL_KEY_CHARS} characters without NUL.",
        "bad_value": "Label values are strings, integers, or lists of those.",
        "long_value": f"Label values are at most {MAX_LABEL_VALUE_CHARS} characters, without NUL.",
        "too_many_choices": f"At most {MAX_LABEL_CHOICES} values per label.",
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_object")
        if len(data) > MAX_LABEL_SELECTORS:
            self.fail("too_many")
        for key, wanted in data.items():
            if not key or len(key) > MAX_LABEL_KEY_CHARS or _BAD_CHARS.search(key):
                self.fail("bad_key")
            if isinstance(wanted, list):
                if len(wanted) > MAX_LABEL_CHOICES:
                    self.fail("too_many_choices")
                for choice in wanted:
                    self._check_value(choice)
            else:
                self._check_value(wanted)
        return dict(data)

    def _check_value(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail("bad_value")
        if isinstance(value, str) and (len(value) > MAX_LABEL_VALUE_CHARS or _BAD_CHARS.search(value)):
            self.fail("long_value")

    def to_representation(self, value: Any) -> Any:
        return value


class JobCreateSerializer(serializers.Serializer):
    """A job specification (``JobSpec``). Fields left out take the server's defaults."""

    kind = serializers.RegexField(
        KIND_PATTERN,
        max_length=64,
        help_text="The task kind agents run: 1-64 letters, digits, '.', '_' or '-'.",
    )
    payload = serializers.DictField(
        required=False, help_text=f"A JSON object handed to every task; at most {MAX_PAYLOAD_BYTES} bytes."
    )
    target_agent_ids = serializers.ListField(
        child=serializers.RegexField(AGENT_ID_PATTERN, max_length=63),
        required=False,
        max_length=MAX_TARGET_AGENTS,
        help_text="Only these agents (each must exist).",
    )
    target_labels = LabelSelectorField(required=False, help_text="Label selector: {key: value | [values]}.")
    target_capabilities = serializers.ListField(
        child=serializers.CharField(max_length=MAX_CAPABILITY_CHARS),
        required=False,
        max_length=MAX_CAPABILITIES,
        help_text="The agent must offer all of these.",
    )
    target_all = serializers.BooleanField(
        default=False,
        help_text="Every agent of the fleet, on purpose. Required when no target is given (no agent ids, labels or "
        "capabilities); refused together with one.",
    )
    allow_no_agents = serializers.BooleanField(
        default=False,
        help_text="Launch even though the target matches no agent now (continuous jobs need not say so). "
        "Not stored on the job.",
    )
    allow_unsupported_kind = serializers.BooleanField(
        default=False,
        help_text="Launch even though matching agents do not offer the kind (their capabilities). Not stored.",
    )
    mode = serializers.ChoiceField(
        choices=JobMode.choices,
        default=JobMode.EACH,
        help_text="each: one task per matching agent; any: task_count tasks for any matching agent.",
    )
    task_count = serializers.IntegerField(
        min_value=1, max_value=MAX_TASKS, default=1, help_text="Mode 'any' only: how many tasks."
    )
    continuous = serializers.BooleanField(
        default=False, help_text="Mode 'each' only: agents that match later get a task too."
    )
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, default=0, help_text="Higher runs first.")
    max_attempts = serializers.IntegerField(min_value=1, max_value=100, required=False)
    backoff_base_s = serializers.FloatField(min_value=0, max_value=MAX_BACKOFF_S, required=False)
    backoff_cap_s = serializers.FloatField(min_value=0, max_value=MAX_BACKOFF_S, required=False)
    delivery_timeout_s = serializers.IntegerField(min_value=1, max_value=MAX_TIMEOUT_S, required=False)
    execution_timeout_s = serializers.IntegerField(min_value=1, max_value=MAX_TIMEOUT_S, required=False)
    not_before = serializers.DateTimeField(required=False, allow_null=True, help_text="Do not start before this.")
    idempotency_key = serializers.CharField(
        max_length=200,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Submitting the same key again with the same specification returns the existing job (200) "
        "instead of a new one; with a different specification it is a 409 naming that job.",
    )
    max_in_flight = serializers.IntegerField(
        min_value=1, max_value=MAX_ROLLOUT, required=False, allow_null=True, help_text="Rollout: tasks at once."
    )
    max_in_flight_percent = serializers.IntegerField(
        min_value=1, max_value=100, required=False, allow_null=True, help_text="Rollout: percent of tasks at once."
    )
    rate_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_ROLLOUT, required=False, allow_null=True, help_text="Rollout: assignments a minute."
    )
    abort_failure_ratio = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        allow_null=True,
        help_text="Abort the job when failed/finished tasks exceed this ratio.",
    )
    abort_min_finished = serializers.IntegerField(
        min_value=1, max_value=MAX_ROLLOUT, required=False, help_text="Finished tasks before the abort rule applies."
    )

    def validate_payload(self, value: dict[str, Any]) -> dict[str, Any]:
        check_json_tree(value, MAX_PAYLOAD_DEPTH)
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise serializers.ValidationError(f"The payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, str] = {}
        mode = attrs.get("mode", JobMode.EACH)
        if mode == JobMode.EACH and attrs.get("task_count", 1) != 1:
            errors["task_count"] = "Only for mode 'any': mode 'each' makes one task per matching agent."
        if mode == JobMode.ANY and attrs.get("continuous"):
            errors["continuous"] = "Only for mode 'each'."
        base = attrs.get("backoff_base_s", settings.TASK_DEFAULT_BACKOFF_BASE)
        cap = attrs.get("backoff_cap_s", settings.TASK_DEFAULT_BACKOFF_CAP)
        if cap < base:
            errors["backoff_cap_s"] = f"Must be at least backoff_base_s ({base})."
        if errors:
            raise serializers.ValidationError(errors)
        if "target_agent_ids" in attrs:
            attrs["target_agent_ids"] = list(dict.fromkeys(attrs["target_agent_ids"]))
        if not attrs.get("idempotency_key"):
            attrs.pop("idempotency_key", None)
        return attrs

    def to_spec(self) -> JobSpec:
        """The validated body as a ``JobSpec``; absent fields keep the spec's defaults (from settings)."""
        return JobSpec(**self.validated_data)


class JobSerializer(serializers.ModelSerializer):
    """A job in a list: its specification without the payload, its state and counters."""

    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields: tuple[str, ...] = (
            "id",
            "kind",
            "target_agent_ids",
            "target_labels",
            "target_capabilities",
            "mode",
            "task_count",
            "continuous",
            "target_all",
            "priority",
            "max_attempts",
            "backoff_base_s",
            "backoff_cap_s",
            "delivery_timeout_s",
            "execution_timeout_s",
            "not_before",
            "idempotency_key",
            "max_in_flight",
            "max_in_flight_percent",
            "rate_per_minute",
            "abort_failure_ratio",
            "abort_min_finished",
            "state",
            "tasks_total",
            "tasks_succeeded",
            "tasks_failed",
            "tasks_canceled",
            "created_by",
            "created_at",
            "updated_at",
            "finished_at",
        )
        read_only_fields: tuple[str, ...] = fields


class TaskStateCountsSerializer(serializers.Serializer):
    """How many of the job's tasks are in each state."""

    queued = serializers.IntegerField()
    assigned = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(
        help_text="Failed: the agent reported an error, or an operator ended the attempt of an offline agent."
    )
    timed_out = serializers.IntegerField(
        help_text="Timed out (label 'timed out'). The job's tasks_failed counts failed and timed out together."
    )
    canceled = serializers.IntegerField()


class JobDetailSerializer(JobSerializer):
    """One job: everything in the list, the payload, and the count of its tasks per state."""

    payload = serializers.DictField(read_only=True)
    counts = serializers.SerializerMethodField()

    class Meta(JobSerializer.Meta):
        fields = (*JobSerializer.Meta.fields[:2], "payload", *JobSerializer.Meta.fields[2:], "counts")
        read_only_fields = fields

    @extend_schema_field(TaskStateCountsSerializer)
    def get_counts(self, job: Job) -> dict[str, int]:
        counts = dict.fromkeys(TaskState.values, 0)
        rows = Task.objects.filter(job_id=job.pk).order_by().values_list("state").annotate(n=Count("id"))
        for state, number in rows:
            counts[state] = number
        return counts


class CancelSerializer(serializers.Serializer):
    force = serializers.BooleanField(
        default=False, help_text="End held tasks now instead of asking their agents to stop first."
    )


class NoBodySerializer(serializers.Serializer):
    """The operation takes no parameters: an empty object or no body (any field is refused as unknown)."""


class RetrySerializer(serializers.Serializer):
    reset_backoff = serializers.BooleanField(
        default=False,
        help_text="The retried tasks' delays between attempts start again from backoff_base_s. "
        "Without it they continue to grow from the attempt number.",
    )


class RetryFailedSerializer(RetrySerializer):
    task_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID),
        required=False,
        allow_null=True,
        max_length=MAX_TASKS,
        help_text="Only these of the job's failed or timed-out tasks. Absent: all of them.",
    )


class BackoffRangeSerializer(serializers.Serializer):
    min_s = serializers.FloatField()
    max_s = serializers.FloatField()


class RetryAllowanceSerializer(serializers.Serializer):
    """What a retry gives the tasks: each gets the job's max_attempts more attempts, numbered on from the last."""

    retried = serializers.IntegerField(help_text="How many tasks were queued again.")
    more_attempts = serializers.IntegerField(help_text="Attempts each retried task gets: the job's max_attempts.")
    attempts_allowed = serializers.CharField(
        help_text="The attempt numbers now allowed, e.g. '5-7' (several ranges when the tasks had run "
        "different numbers of attempts; empty when nothing was retried)."
    )
    next_attempt = serializers.IntegerField(allow_null=True, help_text="The lowest next attempt number.")
    max_attempts = serializers.IntegerField(allow_null=True, help_text="The highest attempt number now allowed.")
    reason = serializers.CharField(help_text="Why this many: e.g. '3 more attempts: the job's max_attempts'.")
    reset_backoff = serializers.BooleanField()
    next_backoff = BackoffRangeSerializer(
        allow_null=True,
        help_text="The wait after the next attempt if it fails too (jitter picks a value in the range).",
    )


class RetryFailedResultSerializer(RetryAllowanceSerializer):
    job = JobDetailSerializer()


class WaveSerializer(serializers.Serializer):
    wave = serializers.IntegerField(help_text="1 for the first wave.")
    tasks = serializers.IntegerField()


class PreviewWarningSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="fleet_wide, no_matching_agent, kind_not_offered or kind_unknown.")
    message = serializers.CharField()
    agents = serializers.ListField(child=serializers.CharField(), help_text="The agents concerned (the first 1000).")


class JobPreviewSerializer(serializers.Serializer):
    """What the specification would create now. Nothing is written."""

    agents = serializers.ListField(
        child=serializers.CharField(),
        help_text="The selected agents' ids (the first 1000). Mode 'any': those that could take a task now.",
    )
    agent_count = serializers.IntegerField()
    task_count = serializers.IntegerField()
    wave_size = serializers.IntegerField(allow_null=True, help_text="The tightest rollout limit; null without one.")
    paced_by = serializers.ChoiceField(
        choices=PACED_BY,
        help_text="in_flight: a wave starts as the previous one finishes; rate: one wave a minute; none: all at once.",
    )
    wave_count = serializers.IntegerField()
    waves = WaveSerializer(many=True, help_text="The first 1000 waves.")
    target_all = serializers.BooleanField(help_text="The job targets every agent of the fleet.")
    warnings = PreviewWarningSerializer(
        many=True,
        help_text="What the submit checks found: fleet_wide, no_matching_agent, kind_not_offered (certain "
        "failures; submit refuses them without allow_no_agents / allow_unsupported_kind), kind_unknown.",
    )


class TaskSerializer(serializers.ModelSerializer):
    """A task in a list. ``agent`` is the agent it is pinned to or assigned to."""

    job = serializers.IntegerField(source="job_id", read_only=True)
    agent = serializers.CharField(source="agent_id", read_only=True, allow_null=True)

    class Meta:
        model = Task
        fields: tuple[str, ...] = (
            "id",
            "job",
            "kind",
            "state",
            "agent",
            "pinned",
            "priority",
            "attempt",
            "max_attempts",
            "not_before",
            "lease_expires_at",
            "cancel_requested_at",
            "created_at",
            "assigned_at",
            "started_at",
            "finished_at",
            "updated_at",
        )
        read_only_fields: tuple[str, ...] = fields


class TaskEventSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent_id", read_only=True)

    class Meta:
        model = TaskEvent
        fields = ("id", "kind", "attempt", "from_state", "to_state", "agent", "message_id", "data", "created_at")
        read_only_fields = fields


class TaskDetailSerializer(TaskSerializer):
    """One task: the list fields, its job's payload, its outcome, and its history (oldest first, up to 500 events)."""

    payload = serializers.DictField(source="job.payload", read_only=True, help_text="The job's payload.")
    events = serializers.SerializerMethodField()
    events_truncated = serializers.SerializerMethodField()

    class Meta(TaskSerializer.Meta):
        fields = (*TaskSerializer.Meta.fields, "payload", "progress", "result", "error", "events", "events_truncated")
        read_only_fields = fields

    def _events(self, task: Task) -> list[TaskEvent]:
        """One query for both fields: the first ``MAX_EVENTS`` + 1 rows tell whether there are more."""
        cache: dict[int, list[TaskEvent]] = self.__dict__.setdefault("_events_by_task", {})
        if task.pk not in cache:
            cache[task.pk] = list(TaskEvent.objects.filter(task_id=task.pk).order_by("id")[: MAX_EVENTS + 1])
        return cache[task.pk]

    @extend_schema_field(TaskEventSerializer(many=True))
    def get_events(self, task: Task) -> list[dict[str, Any]]:
        return TaskEventSerializer(self._events(task)[:MAX_EVENTS], many=True).data  # type: ignore[return-value]

    @extend_schema_field(serializers.BooleanField(help_text="More than 500 events: only the first 500 are listed."))
    def get_events_truncated(self, task: Task) -> bool:
        return len(self._events(task)) > MAX_EVENTS


class TaskRetriedSerializer(TaskDetailSerializer):
    """The task queued again, and what the retry gave it (``retry``)."""

    retry = serializers.SerializerMethodField()

    class Meta(TaskDetailSerializer.Meta):
        fields = (*TaskDetailSerializer.Meta.fields, "retry")
        read_only_fields = fields

    @extend_schema_field(RetryAllowanceSerializer)
    def get_retry(self, task: Task) -> dict[str, Any]:
        return RetryAllowanceSerializer(self.context["allowance"]).data


class ExplanationSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable: e.g. ready, job_paused, agent_offline, no_matching_agent.")
    message = serializers.CharField()
