"""Operators' agent endpoints: list and filter the fleet, change labels and admin state, manage credentials."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import django_filters
from django.db import connection
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from aegis_site.api.filters import StrictFilterSet, UtcDateTimeFilter
from aegis_site.api.pagination import IdOrderedPage
from aegis_site.api.strict import refuse_body
from aegis_site.core.audit import Actor
from registry import actions
from registry.api.serializers import (
    LABEL_KEY,
    AgentSerializer,
    AgentUpdateSerializer,
    CredentialSerializer,
    EnrolmentPolicySerializer,
    EnrolmentTokenCreateSerializer,
    EnrolmentTokenIssuedSerializer,
    EnrolmentTokenSerializer,
    IssuedTokenSerializer,
)
from registry.models import AdminState, Agent, AgentCredential, Connectivity, EnrolmentToken


class AgentFilter(StrictFilterSet):
    connectivity = django_filters.ChoiceFilter(choices=Connectivity.choices)
    admin_state = django_filters.ChoiceFilter(choices=AdminState.choices)
    version = django_filters.CharFilter()
    label = django_filters.CharFilter(method="filter_label", help_text="key=value; repeat the parameter to AND.")
    capability = django_filters.CharFilter(method="filter_capability")
    last_seen_before = UtcDateTimeFilter(field_name="last_seen_at", lookup_expr="lt")
    last_seen_after = UtcDateTimeFilter(field_name="last_seen_at", lookup_expr="gte")
    search = django_filters.CharFilter(method="filter_search", help_text="Part of the id or the name.")

    class Meta(StrictFilterSet.Meta):
        model = Agent
        fields = ["connectivity", "admin_state", "version"]

    def filter_label(self, queryset: QuerySet[Agent], name: str, value: str) -> QuerySet[Agent]:
        for item in self.data.getlist("label") if hasattr(self.data, "getlist") else [value]:
            key, separator, wanted = item.partition("=")
            if not separator or not LABEL_KEY.match(key):
                raise serializers.ValidationError({"label": ["Use key=value with a valid label key."]})
            queryset = queryset.filter(**{f"labels__{key}": wanted})  # the key cannot hold "__" (LABEL_KEY)
        return queryset

    def filter_capability(self, queryset: QuerySet[Agent], name: str, value: str) -> QuerySet[Agent]:
        if connection.vendor == "postgresql":
            return queryset.filter(capabilities__contains=[value])
        # SQLite has no JSON containment: match the quoted name in the array's text.
        as_text = Cast("capabilities", TextField())
        return queryset.annotate(capabilities_text=as_text).filter(capabilities_text__contains=json.dumps(value))

    def filter_search(self, queryset: QuerySet[Agent], name: str, value: str) -> QuerySet[Agent]:
        from django.db.models import Q

        return queryset.filter(Q(id__icontains=value) | Q(name__icontains=value))


def _actor(request: Request) -> Actor:
    return Actor.of_user(request.user)


class AgentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Agent]):
    """The fleet. Presence and what an agent offers come from the agent; operators set labels and admin state."""

    queryset = Agent.objects.all()
    serializer_class = AgentSerializer
    filterset_class = AgentFilter
    pagination_class = IdOrderedPage
    lookup_value_regex = r"[a-z0-9][a-z0-9._-]{0,62}"
    required_permissions = {
        "partial_update": ["registry.change_agent"],
        "drain": ["registry.change_agent"],
        "disable": ["registry.change_agent"],
        "enable": ["registry.change_agent"],
        "rotate_token": ["registry.change_agent", "registry.add_agentcredential"],
        "credentials": ["registry.view_agentcredential"],
        "revoke_credential": ["registry.change_agentcredential"],
    }

    @extend_schema(request=AgentUpdateSerializer, responses=AgentSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        agent = self.get_object()
        body = AgentUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if "name" in data or "labels" in data:
            actions.register_agent(agent.pk, _actor(request), name=data.get("name", ""), labels=data.get("labels"))
        if "admin_state" in data and data["admin_state"] != agent.admin_state:
            actions.set_admin_state(agent.pk, AdminState(data["admin_state"]), _actor(request))
        return Response(AgentSerializer(Agent.objects.get(pk=agent.pk)).data)

    def _set_state(self, request: Request, state: AdminState) -> Response:
        agent = self.get_object()
        return Response(AgentSerializer(actions.set_admin_state(agent.pk, state, _actor(request))).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, pk: str | None = None) -> Response:
        """Finish what runs, take nothing new (the agent is told over MQTT)."""
        refuse_body(request.data)
        return self._set_state(request, AdminState.DRAINING)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str | None = None) -> Response:
        """No work, and its credentials stop authenticating."""
        refuse_body(request.data)
        return self._set_state(request, AdminState.DISABLED)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        refuse_body(request.data)
        return self._set_state(request, AdminState.ACTIVE)

    @extend_schema(request=None, responses={201: IssuedTokenSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request: Request, pk: str | None = None) -> Response:
        """A new token (shown once); the agent's other tokens, and JWTs made from them, stop working."""
        refuse_body(request.data)
        agent = self.get_object()
        credential, token = actions.rotate_token(agent.pk, _actor(request))
        body = {"agent_id": agent.pk, "credential_id": credential.pk, "token": token}
        return Response(IssuedTokenSerializer(body).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=CredentialSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def credentials(self, request: Request, pk: str | None = None) -> Response:
        agent = self.get_object()
        credentials = AgentCredential.objects.filter(agent_id=agent.pk).order_by("-id")[:200]
        return Response(CredentialSerializer(credentials, many=True).data)

    @extend_schema(
        request=None,
        responses=CredentialSerializer,
        parameters=[OpenApiParameter("credential_id", int, OpenApiParameter.PATH)],
    )
    @action(detail=True, methods=["post"], url_path=r"credentials/(?P<credential_id>[0-9]{1,18})/revoke")
    def revoke_credential(self, request: Request, pk: str | None = None, credential_id: str = "") -> Response:
        refuse_body(request.data)
        agent = self.get_object()
        credential = AgentCredential.objects.filter(pk=int(credential_id), agent_id=agent.pk).first()
        if credential is None:
            raise AgentCredential.DoesNotExist(f"agent {agent.pk} has no credential {credential_id}")
        return Response(CredentialSerializer(actions.revoke_credential(credential.pk, _actor(request))).data)


class EnrolmentTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[EnrolmentToken]):
    """Bootstrap tokens agents trade for their own credentials at ``POST /agent/enrol/``, and their policy."""

    queryset = EnrolmentToken.objects.all()
    serializer_class = EnrolmentTokenSerializer
    lookup_value_regex = "[0-9]{1,18}"
    required_permissions = {
        "create": ["registry.add_agent"],
        "revoke": ["registry.add_agent"],
        "partial_update": ["registry.add_agent"],
    }

    @extend_schema(request=EnrolmentTokenCreateSerializer, responses={201: EnrolmentTokenIssuedSerializer})
    def create(self, request: Request) -> Response:
        body = EnrolmentTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        ttl = timedelta(hours=data["ttl_hours"]) if data.get("ttl_hours") else None
        enrolment, token = actions.create_enrolment_token(
            _actor(request),
            name=data["name"],
            agent_id=data["agent_id"],
            fixed_labels=data.get("fixed_labels"),
            allowed_labels=data.get("allowed_labels"),
            allowed_capabilities=data.get("allowed_capabilities"),
            agent_id_prefix=data.get("agent_id_prefix", ""),
            uses=data["uses"],
            ttl=ttl,
        )
        answer = {**EnrolmentTokenSerializer(enrolment).data, "token": token}
        return Response(answer, status=status.HTTP_201_CREATED)

    @extend_schema(request=EnrolmentPolicySerializer, responses=EnrolmentTokenSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change what later enrolments may claim; agents enrolled already keep the policy they enrolled under."""
        enrolment = self.get_object()
        body = EnrolmentPolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        changed = actions.set_enrolment_policy(enrolment.pk, _actor(request), **body.validated_data)
        return Response(EnrolmentTokenSerializer(changed).data)

    @extend_schema(request=None, responses=EnrolmentTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        refuse_body(request.data)
        enrolment = self.get_object()
        return Response(EnrolmentTokenSerializer(actions.revoke_enrolment_token(enrolment.pk, _actor(request))).data)
