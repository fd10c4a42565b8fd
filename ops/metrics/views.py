"""``/metrics`` (Prometheus), ``/metrics/system`` and ``/metrics/performance`` (JSON).

All three answer only a ``METRICS_TOKEN`` bearer or a client in ``METRICS_ALLOWED_NETWORKS``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from typing import Any

import psutil
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import REGISTRY

from ops.metrics.collector import DomainCollector, data_dir_usage
from ops.metrics.requests import WINDOW
from tasks.models import Job

_STARTED = time.time()
_finished_samples: list[tuple[float, int]] = []
_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(DomainCollector())
        _registered = True


def allowed(request: HttpRequest) -> bool:
    """``Authorization: Bearer <METRICS_TOKEN>``, or a client address inside ``METRICS_ALLOWED_NETWORKS``."""
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and secrets.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in settings.METRICS_ALLOWED_NETWORKS)


def _refused() -> JsonResponse:
    return JsonResponse(
        {"error": {"code": "permission_denied", "message": "Metrics need METRICS_TOKEN or an allowed address."}},
        status=403,
    )


def prometheus(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return _refused()
    _register()
    return ExportToDjangoView(request)


def system(request: HttpRequest) -> JsonResponse:
    if not allowed(request):
        return _refused()
    process = psutil.Process(os.getpid())
    disk = data_dir_usage()
    memory = psutil.virtual_memory()
    return JsonResponse(
        {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": psutil.cpu_count(),
            "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
            "disk": {"path": str(settings.DATA_DIR), "total": disk.total, "free": disk.free, "percent": disk.percent}
            if disk is not None
            else {"path": str(settings.DATA_DIR), "error": "DATA_DIR cannot be read (does it exist?)"},
            "process": {
                "pid": process.pid,
                "rss": process.memory_info().rss,
                "threads": process.num_threads(),
                "open_files": len(process.open_files()),
                "connections": len(process.net_connections()),
                "uptime_s": round(time.time() - _STARTED, 1),
            },
        }
    )


def performance(request: HttpRequest) -> JsonResponse:
    if not allowed(request):
        return _refused()
    return JsonResponse({"http": WINDOW.summary(), "queue": _queue_throughput()})


def _queue_throughput() -> dict[str, Any]:
    """Tasks finished per second between the oldest sample of the last 5 minutes and now (this process's samples)."""
    totals = Job.objects.aggregate(s=Sum("tasks_succeeded"), f=Sum("tasks_failed"), c=Sum("tasks_canceled"))
    finished = sum(value or 0 for value in totals.values())
    now = time.monotonic()
    _finished_samples.append((now, finished))
    while _finished_samples and now - _finished_samples[0][0] > 300:
        _finished_samples.pop(0)
    first_at, first = _finished_samples[0]
    span = now - first_at
    return {
        "tasks_finished_total": finished,
        "tasks_per_s": round((finished - first) / span, 3) if span > 0 else None,
        "over_s": round(span, 1),
    }
