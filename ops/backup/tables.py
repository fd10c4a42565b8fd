"""Row counts, applied migrations and migration compatibility, over any DB-API cursor.

The same functions run on the live database, on a dump's snapshot and on a scratch
restore, so the numbers they produce are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def row_counts(cursor: Any, tables: Iterable[str]) -> dict[str, int]:
    counts = {}
    for table in sorted(tables):
        cursor.execute(f"SELECT COUNT(*) FROM {quote(table)}")  # noqa: S608  # nosec B608  # a name from the catalogue, quoted
        counts[table] = int(cursor.fetchone()[0])
    return counts


def applied_migrations(cursor: Any, tables: Iterable[str]) -> dict[str, list[str]]:
    if "django_migrations" not in set(tables):
        return {}
    cursor.execute("SELECT app, name FROM django_migrations ORDER BY app, name")
    applied: dict[str, list[str]] = {}
    for app, name in cursor.fetchall():
        applied.setdefault(app, []).append(name)
    return applied


def unknown_migrations(applied: dict[str, list[str]]) -> list[str]:
    """Migrations recorded in a backup that this code does not have: the backup is newer than the code."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    known = set(loader.disk_migrations)
    known.update(replaced for migration in loader.disk_migrations.values() for replaced in migration.replaces)
    return [f"{app}.{name}" for app, names in sorted(applied.items()) for name in names if (app, name) not in known]


def count_differences(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    return [
        f"{table}: manifest {expected.get(table, '-')}, database {actual.get(table, '-')}"
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    ]


def live_row_counts() -> dict[str, int]:
    with connection.cursor() as cursor:
        return row_counts(cursor, connection.introspection.table_names(cursor))


def project_tables_with_rows() -> list[str]:
    """Tables of this project's own apps (not Django's or third parties') that hold a row."""
    base = Path(settings.BASE_DIR).resolve()
    existing = set(connection.introspection.table_names())
    filled = []
    for app in apps.get_app_configs():
        path = Path(app.path).resolve()
        if not path.is_relative_to(base) or "site-packages" in path.parts:
            continue
        for model in app.get_models():
            table = model._meta.db_table
            if table in existing and model._base_manager.using(connection.alias).exists():
                filled.append(table)
    return sorted(filled)
