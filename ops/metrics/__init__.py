"""Prometheus metrics: django-prometheus for requests, database and cache; the domain's own below."""


def serve_role_metrics() -> None:
    """Bridge and dispatcher: their counters on ``METRICS_PORT`` (Prometheus text at any path), when set."""
    from django.conf import settings
    from prometheus_client import start_http_server

    if settings.METRICS_PORT:
        start_http_server(settings.METRICS_PORT, addr=settings.METRICS_ADDR)
