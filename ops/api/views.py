"""The operator's JWT pair, the audit log (read-only) and the requesting operator's personal API tokens."""

from __future__ import annotations

from datetime import timedelta

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework_simplejwt.views import TokenObtainPairView

from aegis_site.api.filters import StrictFilterSet, UtcDateTimeFilter
from aegis_site.api.strict import refuse_body
from aegis_site.api.throttling import EndpointThrottle
from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from ops import actions
from ops.api.serializers import (
    ApiTokenCreateSerializer,
    ApiTokenIssuedSerializer,
    ApiTokenSerializer,
    AuditEventSerializer,
)
from ops.models import ApiToken


class OperatorTokenView(TokenObtainPairView):
    """An operator's username and password for a short-lived JWT pair (throttled like every credential check)."""

    throttle_classes = [EndpointThrottle]
    throttle_scope = "auth"


class AuditEventFilter(StrictFilterSet):
    action = django_filters.CharFilter()
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    actor = django_filters.CharFilter(field_name="actor_label", help_text="Username, 'agent:<id>' or 'system:<role>'.")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta(StrictFilterSet.Meta):
        model = AuditEvent
        fields = ("action", "object_type", "object_id", "actor", "created_after", "created_before")


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Who did what to which object, newest first."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    required_permissions = {"list": ["core.view_auditevent"]}


class ApiTokenViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The requesting operator's own tokens. Any active staff user manages theirs; nobody sees another's."""

    queryset = ApiToken.objects.all()
    serializer_class = ApiTokenSerializer
    lookup_value_converter = "int"  # not a number: a JSON 404 from the URL resolver
    required_permissions: dict[str, list[str]] = {"list": [], "create": [], "revoke": []}

    def get_queryset(self) -> QuerySet[ApiToken]:
        return super().get_queryset().filter(user_id=self.request.user.pk).defer("token_hash")

    @extend_schema(
        request=ApiTokenCreateSerializer,
        responses={201: ApiTokenIssuedSerializer},
        summary="Issue a personal token; its secret is in this answer only.",
    )
    def create(self, request: Request) -> Response:
        serializer = ApiTokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ttl_days = serializer.validated_data.get("ttl_days")
        api_token, plaintext = actions.issue_api_token(
            request.user,
            serializer.validated_data["name"],
            Actor.of_user(request.user),
            ttl=timedelta(days=ttl_days) if ttl_days else None,
        )
        body = {**ApiTokenSerializer(api_token).data, "token": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiTokenSerializer, summary="Revoke one of your tokens at once.")
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: int) -> Response:
        refuse_body(request.data)
        api_token = actions.revoke_api_token(pk, request.user, Actor.of_user(request.user))
        return Response(ApiTokenSerializer(api_token).data)
