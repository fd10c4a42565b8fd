"""Set-based writes shared by the batches: many rows inserted or updated in one statement.

A column whose value is the same on every row is sent once as a scalar; the
others as one array per column, expanded with ``unnest()`` on PostgreSQL. So
the SQL text does not grow with the batch (psycopg caches its parsing) and the
ORM builds no expression per row (``QuerySet.bulk_update`` builds a ``CASE WHEN``
per row and field: most of the bridge's CPU in a reconnect storm of hellos, before
``registry.actions.record_hellos`` used ``update_each``). SQLite runs in process,
where a plain ``executemany`` is as fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models


class _Columns:
    """Per column of a batch: one prepared scalar when every row agrees, else a prepared array."""

    def __init__(self, model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.connection = connections[DEFAULT_DB_ALIAS]
        self.fields: list[Any] = [model._meta.get_field(name) for name in fields]
        self.values: list[Any] = []
        self.uniform: list[bool] = []
        for index, field in enumerate(self.fields):
            column = [row[index] for row in rows]
            first = column[0]
            same = all(value == first and type(value) is type(first) for value in column)
            self.uniform.append(same)
            prep = field.get_db_prep_value
            self.values.append(
                prep(first, self.connection) if same else [prep(value, self.connection) for value in column]
            )

    def select_list(self) -> tuple[list[str], str, list[Any]]:
        """PostgreSQL: (expressions per column, unnest() source or '', parameters)."""
        expressions, arrays, params, array_params = [], [], [], []
        for index, field in enumerate(self.fields):
            db_type = field.db_type(self.connection)
            if self.uniform[index]:
                expressions.append(f"%s::{db_type}")
                params.append(self.values[index])
            else:
                expressions.append(f"v.c{index}")
                arrays.append((index, f"%s::{db_type}[]"))
                array_params.append(self.values[index])
        source = ""
        if arrays:
            names = ", ".join(f"c{index}" for index, _ in arrays)
            source = f"unnest({', '.join(sql for _, sql in arrays)}) AS v({names})"
        return expressions, source, [*params, *array_params]

    def rows(self, count: int) -> list[list[Any]]:
        return [
            [value if same else value[i] for value, same in zip(self.values, self.uniform, strict=True)]
            for i in range(count)
        ]


def insert_rows(model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert many rows (values in ``fields`` order, prepared as the ORM would) in one statement."""
    if not rows:
        return
    columns = _Columns(model, fields, rows)
    connection = columns.connection
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    names = ", ".join(quote(field.column) for field in columns.fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            expressions, source, params = columns.select_list()
            if not source:  # every column uniform: still one row per input row
                source = f"generate_series(1, {len(rows)})"
            # Placeholders of the SELECT list (scalars) precede those of unnest() (arrays).
            cursor.execute(f"INSERT INTO {table} ({names}) SELECT {', '.join(expressions)} FROM {source}", params)  # nosec B608  # identifiers from model metadata, quoted; values are parameters
        else:
            placeholders = ", ".join(["%s"] * len(columns.fields))
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({placeholders})", columns.rows(len(rows)))  # nosec B608  # identifiers from model metadata, quoted; values are parameters


def update_each(model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Set ``fields`` of many rows to per-row values. Each row is ``(pk, value1, value2, ...)``."""
    if not rows:
        return
    pk_name = model._meta.pk.name
    columns = _Columns(model, [pk_name, *fields], rows)
    connection = columns.connection
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    pk_column = quote(model._meta.pk.column)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns.uniform[0] = False  # the key is always the unnest() driver
            if not isinstance(columns.values[0], list):
                columns.values[0] = [columns.values[0]] * len(rows)
            expressions, source, params = columns.select_list()
            targets = [quote(field.column) for field in columns.fields[1:]]
            assignments = ", ".join(
                f"{target} = {expression}" for target, expression in zip(targets, expressions[1:], strict=True)
            )
            cursor.execute(f"UPDATE {table} SET {assignments} FROM {source} WHERE {table}.{pk_column} = v.c0", params)  # nosec B608  # identifiers from model metadata, quoted; values are parameters
        else:
            assignments = ", ".join(f"{quote(field.column)} = %s" for field in columns.fields[1:])
            cursor.executemany(
                f"UPDATE {table} SET {assignments} WHERE {pk_column} = %s",  # nosec B608  # identifiers from model metadata, quoted; values are parameters
                [[*row[1:], row[0]] for row in columns.rows(len(rows))],
            )
