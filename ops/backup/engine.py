"""What each database engine provides to the backup, restore and drill code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ops.backup import BackupError


@dataclass
class Dump:
    payload: bytes
    row_counts: dict[str, int]  # taken from the same snapshot as the payload
    migrations: dict[str, list[str]]
    database: str


@dataclass
class Scratch:
    """A restored copy that is not live yet: a database name (PostgreSQL) or a file path (SQLite)."""

    name: str
    row_counts: dict[str, int]
    migrations: dict[str, list[str]]


class Engine(Protocol):
    name: str

    def dump(self, compress: bool) -> Dump: ...

    def restore_scratch(self, payload: bytes, purpose: str) -> Scratch: ...

    def scratch_settings(self, scratch: Scratch) -> dict[str, Any]: ...

    def drop_scratch(self, scratch: Scratch) -> None: ...

    def swap_in(self, scratch: Scratch) -> None: ...


def engine_for(settings_dict: dict[str, Any]) -> Engine:
    from ops.backup.postgres import PostgresEngine
    from ops.backup.sqlite import SqliteEngine

    backend = settings_dict["ENGINE"]
    if backend.endswith("sqlite3"):
        if settings_dict["NAME"] == ":memory:" or "mode=memory" in str(settings_dict["NAME"]):
            raise BackupError("an in-memory SQLite database cannot be backed up or restored")
        return SqliteEngine(settings_dict)
    if backend.endswith("postgresql"):
        return PostgresEngine(settings_dict)
    raise BackupError(f"backups support PostgreSQL and SQLite, not {backend}")
