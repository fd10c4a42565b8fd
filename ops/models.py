"""Cross-cutting records: the audit log and operators' API tokens."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """Who did what to which object. Append-only: nothing updates or deletes rows but retention pruning."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="Username, 'agent:<id>' or 'system:<role>'.")
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=100)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "audit_events"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["action"], name="audit_action_idx"),
            models.Index(fields=["created_at"], name="audit_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.object_type}:{self.object_id}"


class ApiToken(models.Model):
    """An operator's personal API token (``aeo_...``): acts as its user. Stored as a hash, shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'deploy script'.")
    token_prefix = models.CharField(max_length=12, help_text="First characters, to recognise a token.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_tokens"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…) of {self.user}"


class RoleHeartbeat(models.Model):
    """The last sign of life of one long-running role process (bridge, dispatcher): health checks read it."""

    role = models.CharField(max_length=20)
    instance = models.CharField(max_length=200, help_text="host:pid of the process.")
    beat_at = models.DateTimeField()
    started_at = models.DateTimeField()
    info = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "role_heartbeats"
        constraints = [models.UniqueConstraint(fields=["role", "instance"], name="role_heartbeat_unique")]
        indexes = [models.Index(fields=["role", "beat_at"], name="role_heartbeat_recent_idx")]

    def __str__(self) -> str:
        return f"{self.role} {self.instance}"
