"""``/api/v1/auth/token/``, ``/api/v1/audit/`` and ``/api/v1/me/tokens/`` (included under the ``v1-ops`` namespace)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from ops.api.views import ApiTokenViewSet, AuditEventViewSet, OperatorTokenView
from registry.api.agent_views import RefreshView

router = SimpleRouter(use_regex_path=False)  # path converters: integer ids in the schema too
router.register("audit", AuditEventViewSet, basename="audit")
router.register("me/tokens", ApiTokenViewSet, basename="me-token")

urlpatterns = [
    path("auth/token/", OperatorTokenView.as_view(), name="auth-token"),
    # The same view as agent/token/refresh/: either kind of refresh token is accepted at both.
    path("auth/token/refresh/", RefreshView.as_view(), name="auth-token-refresh"),
    *router.urls,
]
