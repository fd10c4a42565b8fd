"""Operators' notification endpoints: subscriptions and their deliveries. Every write is a ``notify.actions`` call."""

from __future__ import annotations

from typing import Any

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from aegis_site.api.filters import StrictFilterSet
from aegis_site.api.pagination import CursorPage
from aegis_site.api.strict import refuse_body
from aegis_site.core.audit import Actor
from notify import actions
from notify.api.serializers import (
    DeliverySerializer,
    SubscriptionSerializer,
    SubscriptionWithSecretSerializer,
    SubscriptionWriteSerializer,
)
from notify.models import Delivery, DeliveryState, EventType, Subscription

# What PUT (a whole subscription) sets for the fields it leaves out.
_EMPTY: dict[str, Any] = {"url": "", "emails": [], "job_kinds": [], "agent_labels": {}}


def _actor(request: Request) -> Actor:
    return Actor.of_user(request.user)


class SubscriptionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet[Subscription]
):
    """Who hears of which events. The secret is shown whole on create and rotation only."""

    queryset = Subscription.objects.select_related("created_by")
    serializer_class = SubscriptionSerializer
    lookup_value_regex = "[0-9]{1,18}"
    required_permissions = {"rotate_secret": ["notify.change_subscription"]}

    @extend_schema(request=SubscriptionWriteSerializer, responses={201: SubscriptionWithSecretSerializer})
    def create(self, request: Request) -> Response:
        body = SubscriptionWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        subscription = actions.create_subscription(_actor(request), **body.validated_data)
        return Response(SubscriptionWithSecretSerializer(subscription).data, status=status.HTTP_201_CREATED)

    def _change(self, request: Request, partial: bool) -> Response:
        subscription = self.get_object()
        body = SubscriptionWriteSerializer(data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        changes = dict(body.validated_data) if partial else {**_EMPTY, **body.validated_data}
        changed = actions.update_subscription(subscription.pk, _actor(request), **changes)
        return Response(SubscriptionSerializer(changed).data)

    @extend_schema(request=SubscriptionWriteSerializer, responses=SubscriptionSerializer)
    def update(self, request: Request, pk: str | None = None) -> Response:
        """Replace the subscription's settings (fields left out take their defaults); the secret stays."""
        return self._change(request, partial=False)

    @extend_schema(request=SubscriptionWriteSerializer, responses=SubscriptionSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self._change(request, partial=True)

    def perform_destroy(self, instance: Subscription) -> None:
        actions.delete_subscription(instance.pk, _actor(self.request))

    @extend_schema(request=None, responses={201: SubscriptionWithSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """A new signing secret, shown in this answer only; the old one stops signing at once."""
        refuse_body(request.data)
        subscription, _secret = actions.rotate_secret(self.get_object().pk, _actor(request))
        return Response(SubscriptionWithSecretSerializer(subscription).data, status=status.HTTP_201_CREATED)


class DeliveryFilter(StrictFilterSet):
    subscription = django_filters.NumberFilter(field_name="subscription_id", min_value=1, max_value=2**63 - 1)
    state = django_filters.ChoiceFilter(choices=DeliveryState.choices)
    event_type = django_filters.ChoiceFilter(field_name="event__type", choices=EventType.choices)

    class Meta(StrictFilterSet.Meta):
        model = Delivery
        fields = ["subscription", "state", "event_type"]


class DeliveryPage(CursorPage):
    ordering = ("-created_at", "-id")  # type: ignore[assignment]  # newest first; ids are random


class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Delivery]):
    """Each event on its way to a subscription, newest first, with its attempt log."""

    queryset = Delivery.objects.select_related("event").prefetch_related("tries")
    serializer_class = DeliverySerializer
    filterset_class = DeliveryFilter
    pagination_class = DeliveryPage
    lookup_value_regex = "msg_[0-9a-f]{32}"
    required_permissions = {"redeliver": ["notify.change_delivery"]}

    @extend_schema(
        request=None,
        responses={
            200: DeliverySerializer,
            409: OpenApiResponse(
                description="invalid_state: merged into a digest (redeliver its leader) or being sent right now."
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def redeliver(self, request: Request, pk: str | None = None) -> Response:
        """Send it again with the same ``webhook-id``: due now, with a fresh deadline."""
        refuse_body(request.data)
        delivery = actions.redeliver(self.get_object().pk, _actor(request))
        return Response(DeliverySerializer(self.get_queryset().get(pk=delivery.pk)).data)
