"""The audit log and operators' personal API tokens over HTTP. A token's secret is shown once, at creation."""

from __future__ import annotations

from rest_framework import serializers

from aegis_site.core.models import AuditEvent
from ops.models import ApiToken

MAX_TOKEN_TTL_DAYS = 3650


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(
        source="actor_label", read_only=True, help_text="Username, 'agent:<id>' or 'system:<role>'."
    )
    actor_id = serializers.IntegerField(read_only=True, allow_null=True, help_text="The user's id, for an operator.")

    class Meta:
        model = AuditEvent
        fields = ("id", "actor", "actor_id", "action", "object_type", "object_id", "data", "created_at")
        read_only_fields = fields


class ApiTokenSerializer(serializers.ModelSerializer):
    """A personal token without its secret: ``token_prefix`` is enough to recognise it."""

    class Meta:
        model = ApiToken
        fields: tuple[str, ...] = ("id", "name", "token_prefix", "created_at", "expires_at", "revoked_at")
        read_only_fields: tuple[str, ...] = fields


class ApiTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. 'deploy script'.")
    ttl_days = serializers.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_TTL_DAYS,
        required=False,
        allow_null=True,
        help_text="Days until it expires. Absent or null: it lasts until revoked.",
    )


class ApiTokenIssuedSerializer(ApiTokenSerializer):
    """The new token, with its secret: shown this once, never stored (only a hash is)."""

    token = serializers.CharField(read_only=True, help_text="Authorization: Bearer <token>. Shown only now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = (*ApiTokenSerializer.Meta.fields, "token")
        read_only_fields = fields
