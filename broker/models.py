"""The transactional outbox: messages written with the state change that caused them, published after commit."""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """One MQTT message to an agent's inbox, published at QoS 1 and marked sent after the PUBACK."""

    agent_id = models.CharField(max_length=63)
    topic = models.CharField(max_length=200)
    message_type = models.CharField(max_length=40)
    payload = models.JSONField()
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # Written by a process that publishes it itself right after its commit (the dispatcher); the
    # bridge leaves such a row alone for OUTBOX_HANDOFF_GRACE and only then publishes it as a fallback.
    direct = models.BooleanField(default=False)

    class Meta:
        db_table = "outbox_messages"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["id"], name="outbox_unsent_idx", condition=models.Q(sent_at__isnull=True)),
            models.Index(fields=["agent_id", "id"], name="outbox_agent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type} to {self.agent_id}"
