"""Serializers of the registry API: agents and their credentials (operators), enrolment and `me` (agents)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rest_framework import serializers

from registry import policy
from registry.models import AGENT_ID_PATTERN, AdminState, Agent, AgentCredential, EnrolmentToken

AGENT_ID_REGEX = AGENT_ID_PATTERN.replace(r"\A", "^").replace(r"\Z", "$")
_LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9./-]{0,62}$"  # no "_": a key never forms a "__" lookup in a filter
LABEL_KEY = re.compile(_LABEL_KEY)


class LabelsField(serializers.DictField):
    """String key/value pairs (at most 50), what label selectors match on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.CharField(max_length=200, allow_blank=True), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        value = super().to_internal_value(data)
        if len(value) > 50:
            raise serializers.ValidationError("At most 50 labels.")
        for key in value:
            serializers.RegexField(_LABEL_KEY).run_validation(key)
        return dict(value)


class CapabilitiesField(serializers.ListField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"), max_length=100, **kwargs)


class AgentSerializer(serializers.ModelSerializer[Agent]):
    """What operators and agents see of an agent. Presence, version and offers come from the agent itself."""

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "labels",
            "capabilities",
            "version",
            "max_concurrency",
            "connectivity",
            "transport",
            "admin_state",
            "last_seen_at",
            "disconnect_reason",
            "enrolled_at",
            "updated_at",
        ]
        read_only_fields = fields


class AgentUpdateSerializer(serializers.Serializer[Agent]):
    """``PATCH /agents/{id}/``: what an operator may change. Presence and offers stay the agent's."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    labels = LabelsField(required=False)
    admin_state = serializers.ChoiceField(choices=AdminState.choices, required=False)


class CredentialSerializer(serializers.ModelSerializer[AgentCredential]):
    """A credential without its secret: only the prefix that lets an operator recognise a token."""

    class Meta:
        model = AgentCredential
        fields = [
            "id",
            "kind",
            "token_prefix",
            "cert_fingerprint",
            "cert_serial",
            "created_at",
            "expires_at",
            "revoked_at",
        ]
        read_only_fields = fields


class IssuedTokenSerializer(serializers.Serializer[Any]):
    """A new agent token: the plaintext appears in this answer only."""

    agent_id = serializers.CharField(read_only=True)
    credential_id = serializers.IntegerField(read_only=True)
    token = serializers.CharField(read_only=True)


class EnrolmentTokenSerializer(serializers.ModelSerializer[EnrolmentToken]):
    class Meta:
        model = EnrolmentToken
        fields = [
            "id",
            "name",
            "token_prefix",
            "agent_id",
            "agent_id_prefix",
            "fixed_labels",
            "allowed_labels",
            "allowed_capabilities",
            "uses_left",
            "created_at",
            "expires_at",
            "revoked_at",
        ]
        read_only_fields = fields


class PolicyField(serializers.JSONField):
    """A part of an enrolment policy, checked by ``registry.policy``'s cleaner for it."""

    def __init__(self, clean: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clean = clean

    def to_internal_value(self, data: Any) -> Any:
        try:
            return self.clean(super().to_internal_value(data))
        except policy.PolicyError as error:
            raise serializers.ValidationError(str(error)) from error


AGENT_ID_PREFIX_REGEX = r"^[a-z0-9][a-z0-9._-]{0,31}$"


class EnrolmentPolicySerializer(serializers.Serializer[Any]):
    """What an agent enrolling with the token may claim (``registry.policy``); every part defaults to nothing."""

    fixed_labels = PolicyField(policy.clean_fixed_labels, required=False, help_text="Always given; not changeable.")
    allowed_labels = PolicyField(
        policy.clean_allowed_labels,
        required=False,
        help_text='Label key (or "*") to value globs the agent may claim, e.g. {"zone": ["eu-*"], "rack": ["*"]}.',
    )
    allowed_capabilities = PolicyField(
        policy.clean_allowed_capabilities, required=False, help_text='Capability globs it may offer, e.g. ["echo"].'
    )
    agent_id_prefix = serializers.RegexField(
        AGENT_ID_PREFIX_REGEX, required=False, allow_blank=True, help_text="New agent ids must start with it."
    )


class EnrolmentTokenCreateSerializer(EnrolmentPolicySerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    agent_id = serializers.RegexField(AGENT_ID_REGEX, required=False, allow_blank=True, default="")
    labels = PolicyField(
        policy.clean_fixed_labels, required=False, write_only=True, help_text="Deprecated: fixed_labels's old name."
    )
    uses = serializers.IntegerField(min_value=1, max_value=100_000, default=1)
    ttl_hours = serializers.IntegerField(min_value=1, max_value=24 * 365, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "labels" in attrs:
            if "fixed_labels" in attrs:
                raise serializers.ValidationError({"labels": ["Give fixed_labels only (labels is its old name)."]})
            attrs["fixed_labels"] = attrs.pop("labels")
        return attrs


class EnrolmentTokenIssuedSerializer(EnrolmentTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once.")

    class Meta(EnrolmentTokenSerializer.Meta):
        fields = [*EnrolmentTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class EnrolSerializer(serializers.Serializer[Any]):
    """``POST /agent/enrol/``: trade a bootstrap token for the agent's own token."""

    enrolment_token = serializers.CharField(max_length=200, write_only=True)
    agent_id = serializers.RegexField(AGENT_ID_REGEX)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    labels = LabelsField(required=False, default=dict)
    capabilities = CapabilitiesField(required=False, default=list)
    max_concurrency = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    version = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    transport = serializers.ChoiceField(
        choices=["mqtt", "http"],
        required=False,
        help_text="How it takes work: mqtt (pushed to its inbox) or http (claims it). "
        "Its first HTTP heartbeat or claim, or its MQTT hello, sets it too.",
    )


class HeartbeatSerializer(serializers.Serializer[Any]):
    running = serializers.ListField(
        child=serializers.DictField(child=serializers.IntegerField(min_value=0)), max_length=10_000, default=list
    )


class HeartbeatAnswerSerializer(serializers.Serializer[Any]):
    admin_state = serializers.CharField(read_only=True)
    server_time = serializers.DateTimeField(read_only=True)


class JwtPairSerializer(serializers.Serializer[Any]):
    access = serializers.CharField(read_only=True)
    refresh = serializers.CharField(read_only=True)
