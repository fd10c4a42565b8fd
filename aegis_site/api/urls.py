"""``/api/v1/``: each app contributes its routes; the schema and the interactive docs sit beside them."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("v1/", include(("registry.api.urls", "registry"), namespace="v1-registry")),
    path("v1/", include(("tasks.api.urls", "tasks"), namespace="v1-tasks")),
    path("v1/", include(("ops.api.urls", "ops"), namespace="v1-ops")),
    path("v1/", include(("notify.api.urls", "notify"), namespace="v1-notify")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
