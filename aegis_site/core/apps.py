from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The ground floor as a Django app: it holds the audit log and the role heartbeats (``models``)."""

    name = "aegis_site.core"
    label = "core"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from aegis_site.core import db  # noqa: F401  (registers the in_array lookup)
        from aegis_site.core.counters import time_queries

        connection_created.connect(time_queries, dispatch_uid="aegis-query-timing")
