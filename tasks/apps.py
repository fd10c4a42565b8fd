from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"

    def ready(self) -> None:
        from aegis_site.core import db  # noqa: F401  (registers the in_array lookup)
