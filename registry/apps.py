from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"

    def ready(self) -> None:
        from aegis_site.api import schema, strict  # noqa: F401  (schema: the OpenAPI security schemes register)

        strict.install()
