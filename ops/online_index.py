"""``AddIndexOnline``: build an index without blocking writes on PostgreSQL, plainly elsewhere.

``CREATE INDEX`` holds a lock that blocks every INSERT/UPDATE/DELETE on the table until it is
built: on 2,000,000 tasks and 6,000,000 task events that was about 20 s on the benchmark machine,
a stalled dispatcher and bridge. ``CREATE INDEX CONCURRENTLY`` (Django's ``AddIndexConcurrently``)
lets writes go on, but it cannot run in a transaction and exists only on PostgreSQL; the laptop
mode runs on SQLite, where a plain ``CREATE INDEX`` on a small database is what we want. A
migration using it sets ``atomic = False``. If a concurrent build fails it leaves an INVALID index
behind: drop it (``DROP INDEX CONCURRENTLY <name>``) and run ``migrate`` again.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db.migrations import AddIndex


class AddIndexOnline(AddIndexConcurrently):
    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
