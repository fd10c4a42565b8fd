"""``/healthz`` (liveness), ``/healthz/ready`` (readiness) and ``/healthz/comprehensive``.

Liveness asks only whether this process serves requests: it touches no database
connection, so a pool busy with other requests (or a database outage, which a
restart would not cure) never makes Kubernetes restart a healthy pod. Readiness
pings the database through the pool: a pod that cannot get a connection stops
receiving traffic until it can.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from health_check.exceptions import ServiceWarning
from health_check.views import HealthCheckView

LIVENESS = ("ops.health.checks.Serving",)
READINESS = ("health_check.checks.Database",)


def comprehensive_checks() -> tuple[Any, ...]:
    return (
        "health_check.checks.Database",
        "health_check.checks.Cache",
        "ops.health.checks.MqttBroker",
        ("ops.health.checks.RoleFreshness", {"role": "bridge"}),
        ("ops.health.checks.RoleFreshness", {"role": "dispatcher"}),
        "ops.health.checks.Notifications",
        ("health_check.contrib.psutil.Disk", {"path": str(settings.DATA_DIR), "max_disk_usage_percent": 90.0}),
        ("health_check.contrib.psutil.Memory", {"max_memory_usage_percent": 90.0}),
        "ops.health.checks.CertificateExpiry",
    )


class AegisHealthView(HealthCheckView):
    """A warning (say, a certificate expiring in 20 days) is reported but does not make the answer unhealthy."""

    async def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = await super().get(request, *args, **kwargs)
        failing = [result for result in self.results if result.error and not isinstance(result.error, ServiceWarning)]
        if response.status_code == 500 and not failing:
            response.status_code = 200
        return response


class LivenessView(AegisHealthView):
    checks = LIVENESS


class ReadinessView(AegisHealthView):
    checks = READINESS


class ComprehensiveView(AegisHealthView):
    def get_checks(self) -> Any:
        self.checks = comprehensive_checks()
        return super().get_checks()
