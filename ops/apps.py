from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from ops import checks  # noqa: F401  (registers the system checks)
        from ops.metrics.counters import time_queries

        connection_created.connect(time_queries, dispatch_uid="aegis-query-timing")
