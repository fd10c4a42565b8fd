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


JWT_ALGORITHMS = ("HS256", "HS384", "HS512")  # one shared key signs and verifies: no VERIFYING_KEY is configured
JWT_MIN_KEY_BYTES = 32


@register()
def jwt_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``JWT_ALGORITHM`` and ``JWT_SIGNING_KEY``: a JWT signed with "none" or a guessable key is anyone's login."""
    jwt = settings.SIMPLE_JWT
    algorithm, key = jwt.get("ALGORITHM", ""), jwt.get("SIGNING_KEY") or ""
    messages: list[CheckMessage] = []
    if algorithm not in JWT_ALGORITHMS:
        messages.append(
            Error(
                f"JWT_ALGORITHM must be one of {', '.join(JWT_ALGORITHMS)}, got {algorithm!r}.",
                hint="Unset JWT_ALGORITHM (HS256).",
                id="aegis.E002",
            )
        )
    if len(str(key).encode()) < JWT_MIN_KEY_BYTES:
        messages.append(
            Error(
                f"JWT_SIGNING_KEY is {len(str(key).encode())} bytes; at least {JWT_MIN_KEY_BYTES} are needed.",
                hint="Set JWT_SIGNING_KEY (or JWT_SIGNING_KEY_FILE) to a random value, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'.",
                id="aegis.E003",
            )
        )
    return messages
