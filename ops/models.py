"""Operators' personal API tokens (the audit log and role heartbeats are on the ground floor, aegis_site.core)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
