from django.apps import AppConfig


class SiteConfig(AppConfig):
    """The site wires the API kit once every app is loaded: strict serializers and the OpenAPI security schemes."""

    name = "aegis_site"
    verbose_name = "Aegis site"

    def ready(self) -> None:
        from aegis_site.api import schema, strict  # noqa: F401  (schema: the OpenAPI security schemes register)

        strict.install()
