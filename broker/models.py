"""The transactional outbox: messages written with the state change that caused them, published after commit."""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """One MQTT message to an agent's inbox. The bridge publishes unsent rows at QoS 1 and marks them sent."""

    agent_id = models.CharField(max_length=63)
    topic = models.CharField(max_length=200)
    message_type = models.CharField(max_length=40)
    payload = models.JSONField()
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "outbox_messages"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["id"], name="outbox_unsent_idx", condition=models.Q(sent_at__isnull=True)),
            models.Index(fields=["agent_id", "id"], name="outbox_agent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type} to {self.agent_id}"
