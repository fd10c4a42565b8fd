"""Serializers of ``/api/v1/notifications/``: subscriptions and deliveries.

The secret is masked but in the answers to create and rotate-secret.

Types are checked here (``aegis_site.api.strict`` refuses unknown fields and wrong JSON types);
what a value may be (event types, a target kind's URL or addresses, label selectors) is checked
by ``notify.actions``, so the admin refuses the same things.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from notify.actions import mask
from notify.models import Delivery, DeliveryAttempt, DeliveryState, EventType, Subscription, TargetKind

_SELECTOR_SCHEMA = {
    "type": "object",
    "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "description": "Label selector: {key: value | [values]}; empty: any agent.",
}


@extend_schema_field(_SELECTOR_SCHEMA)
class SelectorField(serializers.JSONField):
    """``{key: value | [values]}``, checked by ``notify.actions.clean_agent_labels``."""


class SubscriptionSerializer(serializers.ModelSerializer[Subscription]):
    """A subscription as read: the secret masked (``whsec_…abcd``)."""

    secret = serializers.SerializerMethodField(help_text="Masked; the full secret is shown on create and rotation.")
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    agent_labels = SelectorField(read_only=True)

    class Meta:
        model = Subscription
        fields = [
            "id",
            "name",
            "target_kind",
            "url",
            "emails",
            "events",
            "job_kinds",
            "agent_labels",
            "enabled",
            "secret",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_secret(self, subscription: Subscription) -> str:
        return mask(subscription.secret)


class SubscriptionWithSecretSerializer(SubscriptionSerializer):
    """The answer to create and rotate-secret: the only places the whole secret appears."""

    secret = serializers.CharField(read_only=True, help_text="whsec_…: keep it; it is not shown again.")  # type: ignore[assignment]

    def get_secret(self, subscription: Subscription) -> str:  # pragma: no cover  (a plain field here)
        return subscription.secret


class SubscriptionWriteSerializer(serializers.Serializer[Any]):
    """What an operator sets. On create ``name`` and ``events`` are required, the target's field for its kind."""

    name = serializers.CharField(max_length=100)
    target_kind = serializers.ChoiceField(choices=TargetKind.choices, default=TargetKind.WEBHOOK)
    url = serializers.CharField(max_length=2000, allow_blank=True, required=False, help_text="webhook, slack: http(s).")
    emails = serializers.ListField(
        child=serializers.CharField(max_length=254), max_length=50, required=False, help_text="e-mail target."
    )
    events = serializers.ListField(child=serializers.ChoiceField(choices=EventType.choices), min_length=1)
    job_kinds = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=100, required=False, help_text="Empty: any job."
    )
    agent_labels = SelectorField(required=False)
    enabled = serializers.BooleanField(default=True)


class DeliveryAttemptSerializer(serializers.ModelSerializer[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt
        fields = ["at", "status", "error", "duration_ms"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer[Delivery]):
    """A delivery (``id`` is the ``webhook-id``) with its attempt log, newest first."""

    event_type = serializers.ChoiceField(source="event.type", choices=EventType.choices, read_only=True)
    state = serializers.ChoiceField(choices=DeliveryState.choices, read_only=True)
    attempt_log = DeliveryAttemptSerializer(source="tries", many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "subscription",
            "event",
            "event_type",
            "state",
            "attempts",
            "created_at",
            "next_attempt_at",
            "lease_until",
            "deadline",
            "delivered_at",
            "last_status",
            "last_error",
            "merged_into",
            "attempt_log",
        ]
        read_only_fields = fields
