from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from aegis_site.api import errors
from ops.health.views import ComprehensiveView, LivenessView, ReadinessView
from ops.metrics import views as metrics_views

# The admin's "View site" link: the interactive API docs (a staff session is logged in there too), not "/".
admin.site.site_url = "/api/docs/"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="root"),  # make run's address, bare
    path("admin/", admin.site.urls),
    path("api/", include("aegis_site.api.urls")),
    path("healthz", LivenessView.as_view(), name="healthz"),
    path("healthz/ready", ReadinessView.as_view(), name="healthz-ready"),
    path("healthz/comprehensive", ComprehensiveView.as_view(), name="healthz-comprehensive"),
    path("metrics", metrics_views.prometheus, name="metrics"),
    path("metrics/system", metrics_views.system, name="metrics-system"),
    path("metrics/performance", metrics_views.performance, name="metrics-performance"),
]

handler404 = "aegis_site.urls.not_found"
handler500 = "aegis_site.urls.server_error"


def not_found(request, exception=None):  # type: ignore[no-untyped-def]
    """JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return errors.not_found(request, exception)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request):  # type: ignore[no-untyped-def]
    if request.path.startswith("/api/"):
        return errors.server_error(request)
    from django.views.defaults import server_error as page_server_error

    return page_server_error(request)
