"""Prometheus metrics: django-prometheus for requests, database and cache; the domain's own below."""
