"""The ground floor's records: the audit log every app writes and the role heartbeats every role writes.

Both tables kept their names when the models moved here from ``ops`` (a state-only migration).
"""

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
