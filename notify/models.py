"""Notifications (docs/notifications.md): subscriptions, the events they may receive, and each delivery.

An ``Event`` is written in the transaction of the state change that causes it (an outbox),
with one ``Delivery`` per matching, enabled ``Subscription``; the notifier role
(``manage.py run_notifier``) sends the deliveries after the commit. ``Event.key`` names the
cause (``job.finished:42``), unique, so a cause yields its event once however often it is seen.
"""

from __future__ import annotations

import base64
import secrets
import uuid

from django.conf import settings
from django.db import models


class EventType(models.TextChoices):
    JOB_STARTED = "job.started", "job started"
    JOB_FINISHED = "job.finished", "job finished"
    JOB_PAUSED = "job.paused", "job paused"
    JOB_ABORTED = "job.aborted", "job aborted"
    TASK_FAILED = "task.failed", "task failed (final)"
    AGENT_OFFLINE = "agent.offline", "agent offline"
    AGENT_ONLINE = "agent.online", "agent online"
    AGENT_DISABLED = "agent.disabled", "agent disabled"
    CERTIFICATE_EXPIRING = "certificate.expiring", "certificate expiring"
    RECONCILIATION_STUCK = "reconciliation.stuck", "reconciliation stuck"


class TargetKind(models.TextChoices):
    WEBHOOK = "webhook", "webhook (Standard Webhooks signature)"
    SLACK = "slack", "Slack-compatible incoming webhook"
    EMAIL = "email", "e-mail"


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def new_delivery_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Subscription(models.Model):
    """Who hears of which events: a webhook URL, a Slack-compatible incoming webhook, or e-mail addresses."""

    name = models.CharField(max_length=100)
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices, default=TargetKind.WEBHOOK)
    url = models.URLField(max_length=2000, blank=True, help_text="Webhook or Slack incoming-webhook URL.")
    emails = models.JSONField(default=list, blank=True, help_text="E-mail addresses (target kind e-mail).")
    events = models.JSONField(default=list, help_text='Event types, e.g. ["job.finished", "agent.offline"].')
    job_kinds = models.JSONField(default=list, blank=True, help_text="Only jobs (and their tasks) of these kinds.")
    agent_labels = models.JSONField(
        default=dict, blank=True, help_text="Only agents (and tasks on agents) matching this label selector."
    )
    secret = models.CharField(
        max_length=100, default=new_secret, help_text="whsec_…: signs each webhook (Standard Webhooks)."
    )
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "notify_subscriptions"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One event of the catalogue, written with its cause; ``payload`` is the body's ``data``."""

    id = models.CharField(primary_key=True, max_length=40, default=new_event_id, editable=False)
    type = models.CharField(max_length=40, choices=EventType.choices)
    key = models.CharField(max_length=200, unique=True, help_text="The cause, e.g. job.finished:42: one event each.")
    occurred_at = models.DateTimeField()
    payload = models.JSONField()
    job_id = models.BigIntegerField(null=True, blank=True)  # task.failed: the digest groups by job

    class Meta:
        db_table = "notify_events"
        ordering = ["occurred_at", "id"]
        indexes = [models.Index(fields=["occurred_at"], name="notify_event_time_idx")]

    def __str__(self) -> str:
        return f"{self.type} {self.key}"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "pending"
    SUCCEEDED = "succeeded", "delivered"
    DEAD = "dead", "dead-lettered"
    MERGED = "merged", "sent in a digest"


class Delivery(models.Model):
    """An event on its way to one subscription; ``id`` (``webhook-id``) stays the same over every attempt.

    A notifier takes due deliveries with ``FOR UPDATE SKIP LOCKED`` and sets ``lease_until``
    before it sends, outside any transaction; one that dies mid-send leaves the lease to expire
    and another sends the same delivery again, with the same id (receivers deduplicate by it).
    """

    id = models.CharField(primary_key=True, max_length=40, default=new_delivery_id, editable=False)
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    lease_until = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(help_text="Past it a failing delivery is dead-lettered.")
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The last HTTP status.")
    last_error = models.CharField(max_length=500, blank=True)
    merged_into = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged")

    class Meta:
        db_table = "notify_deliveries"
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["subscription", "event"], name="notify_delivery_once")]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="notify_due_idx", condition=models.Q(state="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} to {self.subscription_id}"


class DeliveryAttempt(models.Model):
    """One try of a delivery: the subscription's delivery log."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tries")
    at = models.DateTimeField()
    status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status; empty: no answer.")
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "notify_delivery_attempts"
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.at:%Y-%m-%d %H:%M:%S}: {self.status or self.error[:40]}"
