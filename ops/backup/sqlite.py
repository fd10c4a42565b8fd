"""SQLite: dumps through the online backup API, restores into a temp file swapped in with ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from django.db import connections

from ops.backup import BackupError
from ops.backup.engine import Dump, Scratch
from ops.backup.tables import applied_migrations, row_counts


def _tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()
    return [name for (name,) in rows]


def _inspect(path: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"the restored SQLite database fails its integrity check: {verdict}")
        tables = _tables(db)
        cursor = db.cursor()
        return row_counts(cursor, tables), applied_migrations(cursor, tables)


class SqliteEngine:
    name = "sqlite"

    def __init__(self, settings_dict: dict[str, Any]) -> None:
        self.settings_dict = settings_dict
        self.path = Path(settings_dict["NAME"])

    def dump(self, compress: bool) -> Dump:
        """A page-by-page copy taken by SQLite itself: consistent even while others write (a file copy is not)."""
        with tempfile.TemporaryDirectory(prefix="aegis-backup-") as workdir:
            copy = Path(workdir) / "copy.sqlite3"
            with (
                contextlib.closing(sqlite3.connect(self.path)) as source,
                contextlib.closing(sqlite3.connect(copy)) as target,
            ):
                source.backup(target)
                # A standalone file: no WAL needed to read it back.
                target.execute("PRAGMA journal_mode=DELETE")
            counts, migrations = _inspect(copy)
            return Dump(copy.read_bytes(), counts, migrations, self.path.name)

    def restore_scratch(self, payload: bytes, purpose: str) -> Scratch:
        """Next to the live file for a restore (``os.replace`` is atomic only within one file system),
        in the temp directory for a drill."""
        directory = self.path.parent if purpose == "restore" else None
        descriptor, name = tempfile.mkstemp(prefix=f".{self.path.name}.{purpose}-", suffix=".sqlite3", dir=directory)
        scratch_path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
            counts, migrations = _inspect(scratch_path)
        except (BackupError, sqlite3.Error) as error:
            scratch_path.unlink(missing_ok=True)
            raise BackupError(f"the dump does not restore: {error}") from error
        return Scratch(str(scratch_path), counts, migrations)

    def scratch_settings(self, scratch: Scratch) -> dict[str, Any]:
        return {**self.settings_dict, "NAME": scratch.name}

    def drop_scratch(self, scratch: Scratch) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(scratch.name + suffix).unlink(missing_ok=True)

    def swap_in(self, scratch: Scratch) -> None:
        """Django's connections are closed and the WAL is checkpointed and emptied first: a leftover
        WAL would be replayed onto the restored file. Other processes must be stopped."""
        connections.close_all()
        if self.path.exists():
            with contextlib.closing(sqlite3.connect(self.path)) as live:
                live.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.replace(scratch.name, self.path)
        for suffix in ("-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
