"""System checks: configuration problems reported at start by every manage.py command."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def configuration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if getattr(settings, "SECRET_KEY_IS_GENERATED", False):
        messages.append(
            Warning(
                "SECRET_KEY is not set: using a generated development key from DATA_DIR/.dev_secret_key.",
                hint="Set SECRET_KEY or SECRET_KEY_FILE; never run production like this.",
                id="aegis.W001",
            )
        )
    if settings.DISPATCHER_BATCH_SIZE > 10_000:
        messages.append(
            Error("DISPATCHER_BATCH_SIZE above 10000 makes one transaction hold too many locks.", id="aegis.E001")
        )
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3") and not settings.DEBUG:
        messages.append(
            Warning(
                "SQLite with DEBUG off: fine for one host, but PostgreSQL is the production database.",
                hint="Set DATABASE_URL=postgres://...",
                id="aegis.W002",
            )
        )
    return messages
