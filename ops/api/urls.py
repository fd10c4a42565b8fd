"""``/api/v1/audit/`` and ``/api/v1/me/tokens/`` (included under the ``v1-ops`` namespace)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from ops.api.views import ApiTokenViewSet, AuditEventViewSet

router = SimpleRouter(use_regex_path=False)  # path converters: integer ids in the schema too
router.register("audit", AuditEventViewSet, basename="audit")
router.register("me/tokens", ApiTokenViewSet, basename="me-token")

urlpatterns = router.urls
