"""``/api/v1/notifications/subscriptions/`` and ``/api/v1/notifications/deliveries/`` (the ``v1-notify`` namespace)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from notify.api.views import DeliveryViewSet, SubscriptionViewSet

app_name = "notify"

router = SimpleRouter()
router.register("notifications/subscriptions", SubscriptionViewSet, basename="subscription")
router.register("notifications/deliveries", DeliveryViewSet, basename="delivery")

urlpatterns = [*router.urls]
