"""Task output compressed with lz4 instead of pglz, where the server has it (PostgreSQL 14+ built with lz4).

A 16 KiB chunk is compressed when stored (TOAST): with pglz that was most of the database's
time on a stream of output, lz4 compresses several times faster for a little more space
(bench/task_logs.py, docs/benchmarks.md). Rows already stored keep their compression; a server
without lz4 keeps pglz (this migration then changes nothing and says so).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

LZ4 = "ALTER TABLE task_log_chunks ALTER COLUMN data SET COMPRESSION lz4"
PGLZ = "ALTER TABLE task_log_chunks ALTER COLUMN data SET COMPRESSION pglz"


def lz4_available(schema_editor: Any) -> bool:
    if schema_editor.connection.vendor != "postgresql":
        return False
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int >= 140000")
        (recent,) = cursor.fetchone()
        if not recent:
            return False
        # Whether the server was built with lz4: the setting's allowed values say so.
        cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        row = cursor.fetchone()
    return bool(row and row[0])


def use_lz4(apps: Any, schema_editor: Any) -> None:
    if lz4_available(schema_editor):
        schema_editor.execute(LZ4)


def use_pglz(apps: Any, schema_editor: Any) -> None:
    if lz4_available(schema_editor):
        schema_editor.execute(PGLZ)


class Migration(migrations.Migration):
    dependencies = [("tasks", "0009_task_artifacts")]

    operations = [migrations.RunPython(use_lz4, use_pglz, elidable=False)]
