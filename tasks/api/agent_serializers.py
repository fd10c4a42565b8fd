"""Serializers of the agent's task endpoints: claim, its tasks, and its reports on them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from broker.protocol import MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS
from tasks.models import Task


class ClaimSerializer(serializers.Serializer[Any]):
    max_tasks = serializers.IntegerField(min_value=1, max_value=100, default=1)
    wait_s = serializers.FloatField(min_value=0, default=0)

    def validate_wait_s(self, value: float) -> float:
        limit = float(settings.API_CLAIM_MAX_WAIT)
        if value > limit:
            raise serializers.ValidationError(f"At most {limit:g} seconds.")
        return value


class AssignmentSerializer(serializers.Serializer[Any]):
    """One attempt of a task, as the MQTT ``task.assign`` message carries it."""

    id = serializers.IntegerField(read_only=True)
    attempt = serializers.IntegerField(read_only=True)
    job_id = serializers.IntegerField(read_only=True)
    kind = serializers.CharField(read_only=True)
    payload = serializers.JSONField(read_only=True)
    timeout_s = serializers.IntegerField(read_only=True)
    lease_s = serializers.IntegerField(read_only=True)


class ClaimAnswerSerializer(serializers.Serializer[Any]):
    tasks = AssignmentSerializer(many=True, read_only=True)


class AgentTaskSerializer(serializers.ModelSerializer[Task]):
    """A task as its agent sees it (all read-only: the agent changes it by posting events)."""

    payload = serializers.JSONField(source="job.payload", read_only=True)

    class Meta:
        model = Task
        fields = [
            "id",
            "job_id",
            "kind",
            "state",
            "attempt",
            "payload",
            "progress",
            "result",
            "error",
            "assigned_at",
            "started_at",
            "finished_at",
            "lease_expires_at",
            "cancel_requested_at",
        ]
        read_only_fields = fields


# Named like tasks.api.serializers.TaskEventSerializer (a stored event, what operators read): the OpenAPI
# components keep their names, ``TaskEventRequest`` for this one, the only one ever sent.
class TaskEventSerializer(serializers.Serializer[Any]):
    """One report on one attempt. ``event_id`` makes a retried POST count once."""

    type = serializers.ChoiceField(choices=["accepted", "progress", "succeeded", "failed", "rejected"])
    attempt = serializers.IntegerField(min_value=1, max_value=32767)
    event_id = serializers.RegexField(r"^[A-Za-z0-9_-]{1,32}$", required=False)
    progress = serializers.DictField(required=False)
    result = serializers.JSONField(required=False)
    error = serializers.DictField(
        required=False,
        help_text=f'For failed: {{"code": 1-{MAX_ERROR_CODE_CHARS} characters, '
        f'"message": up to {MAX_ERROR_MESSAGE_CHARS}}}.',
    )
    retryable = serializers.BooleanField(default=True)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["type"] == "progress" and "progress" not in attrs:
            raise serializers.ValidationError({"progress": ["Required for a progress event."]})
        if attrs["type"] == "failed":
            error = attrs.get("error") or {}
            code, message = error.get("code"), error.get("message")
            if not isinstance(code, str) or not isinstance(message, str):
                raise serializers.ValidationError({"error": ["A failed event needs error.code and error.message."]})
            # The MQTT protocol's bounds (broker.protocol), so both transports store the same errors.
            if not 1 <= len(code) <= MAX_ERROR_CODE_CHARS or len(message) > MAX_ERROR_MESSAGE_CHARS:
                raise serializers.ValidationError(
                    {
                        "error": [
                            f"error.code: 1-{MAX_ERROR_CODE_CHARS} characters, error.message: at most "
                            f"{MAX_ERROR_MESSAGE_CHARS}."
                        ]
                    }
                )
        return attrs


class EventAnswerSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=["applied", "duplicate"], read_only=True)
    state = serializers.CharField(read_only=True, allow_blank=True)
