"""``AddIndexOnline``, ``AddConstraintOnline``: build an index without blocking writes on PostgreSQL, plainly elsewhere.

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

from django.contrib.postgres.operations import AddIndexConcurrently, NotInTransactionMixin
from django.db.migrations import AddConstraint, AddIndex
from django.db.models import BaseConstraint


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


class AddConstraintOnline(NotInTransactionMixin, AddConstraint):
    """A conditional ``UniqueConstraint``, which is a unique index: ``CREATE UNIQUE INDEX CONCURRENTLY`` on PostgreSQL.

    Django has no concurrent form for constraints. A condition makes Django create the
    constraint as a unique index (never ``ALTER TABLE ... ADD CONSTRAINT``), so the same
    statement with ``CONCURRENTLY`` is the same constraint, built while writes go on.
    """

    model_name: str  # set by AddConstraint; django-stubs does not declare them
    constraint: BaseConstraint

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        self._ensure_not_in_transaction(schema_editor)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            sql = str(self.constraint.create_sql(model, schema_editor))
            if not sql.startswith("CREATE UNIQUE INDEX "):
                raise ValueError(f"{self.constraint.name} is not built as a unique index (a conditional one is): {sql}")
            schema_editor.execute("CREATE UNIQUE INDEX CONCURRENTLY " + sql.removeprefix("CREATE UNIQUE INDEX "))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
            return
        self._ensure_not_in_transaction(schema_editor)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            name = schema_editor.quote_name(self.constraint.name)
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
