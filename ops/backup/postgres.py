"""PostgreSQL: ``pg_dump -Fc`` from an exported snapshot, ``pg_restore`` into a scratch database,
then a swap by renaming both databases in one transaction."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess  # nosec B404  # pg_dump/pg_restore by argument list, never a shell
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from django.db import connections
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ops.backup import BackupError
from ops.backup.engine import Dump, Scratch
from ops.backup.tables import applied_migrations, row_counts

MAINTENANCE_DATABASE = "postgres"
CLIENT_HINT = (
    "install the matching client (Debian/Ubuntu: apt-get install postgresql-client-{major} from apt.postgresql.org; "
    "other systems: https://www.postgresql.org/download/) or put its bin directory first in PATH"
)


def client_major(binary: str) -> int:
    # argv lists, no shell, binaries from find_client: nosec B603 for the three calls here
    argv = [binary, "--version"]
    output = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout  # noqa: S603  # nosec B603
    match = re.search(r"\)\s+(\d+)", output)
    if not match:
        raise BackupError(f"cannot read the version of {binary}: {output.strip()!r}")
    return int(match.group(1))


def find_client(name: str, server_major: int) -> str:
    """The packaged binary for the server's major version first, then PATH; it must not be older
    than the server (an older pg_dump refuses a newer server, an older pg_restore a newer dump)."""
    candidates = [f"/usr/lib/postgresql/{server_major}/bin/{name}", shutil.which(name)]
    found = []
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            major = client_major(candidate)
            if major >= server_major:
                return candidate
            found.append(f"{candidate} is version {major}")
    seen = "; ".join(found) if found else f"no {name} found"
    raise BackupError(
        f"{name} must be PostgreSQL {server_major} or newer to match the server (version {server_major}): {seen}. "
        + CLIENT_HINT.format(major=server_major)
    )


def _scalar(cursor: Any) -> Any:
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the server did not report its version")
    return row[0]


def _tables(cursor: Any) -> list[str]:
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")
    return [name for (name,) in cursor.fetchall()]


class PostgresEngine:
    name = "postgresql"

    def __init__(self, settings_dict: dict[str, Any]) -> None:
        self.settings_dict = settings_dict
        self.database = str(settings_dict["NAME"])

    # --- connections -------------------------------------------------------------

    def _params(self, dbname: str) -> dict[str, str]:
        params = {
            "host": self.settings_dict.get("HOST") or "",
            "port": str(self.settings_dict.get("PORT") or ""),
            "user": self.settings_dict.get("USER") or "",
            "password": self.settings_dict.get("PASSWORD") or "",
            "dbname": dbname,
        }
        return {key: value for key, value in params.items() if value}

    def _connect(self, dbname: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(make_conninfo(**self._params(dbname)), autocommit=autocommit)

    def _tool_env(self, dbname: str) -> dict[str, str]:
        """Connection details for pg_dump/pg_restore go through PG* variables: the password never
        appears on a command line (visible to every user in ``ps``)."""
        # Environment variable names, not secrets.
        names = {  # nosec B105
            "host": "PGHOST",
            "port": "PGPORT",
            "user": "PGUSER",
            "password": "PGPASSWORD",  # nosec B105
            "dbname": "PGDATABASE",
        }
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update({names[key]: value for key, value in self._params(dbname).items()})
        return env

    def _server_major(self, cursor: Any) -> int:
        cursor.execute("SHOW server_version_num")
        return int(_scalar(cursor)) // 10000

    # --- backup ------------------------------------------------------------------

    def dump(self, compress: bool) -> Dump:
        """Counts and migrations are read in a REPEATABLE READ transaction whose snapshot pg_dump
        then uses: the manifest describes exactly the rows in the dump, even while others write."""
        with self._connect(self.database, autocommit=False) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            cursor = conn.cursor()
            pg_dump = find_client("pg_dump", self._server_major(cursor))
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = _scalar(cursor)
            tables = _tables(cursor)
            counts, migrations = row_counts(cursor, tables), applied_migrations(cursor, tables)
            # The archive gzips the whole payload when asked; compressing twice only costs time.
            command = [pg_dump, "--format=custom", "--no-password", f"--snapshot={snapshot}"]
            if compress:
                command.append("--compress=0")
            env = self._tool_env(self.database)
            result = subprocess.run(command, env=env, capture_output=True, check=False)  # noqa: S603  # nosec B603
            conn.rollback()
        if result.returncode != 0:
            raise BackupError(f"pg_dump failed: {result.stderr.decode(errors='replace').strip()}")
        return Dump(result.stdout, counts, migrations, self.database)

    # --- restore -----------------------------------------------------------------

    def restore_scratch(self, payload: bytes, purpose: str) -> Scratch:
        name = f"{self.database[:40]}_{purpose}_{secrets.token_hex(4)}"
        with self._connect(MAINTENANCE_DATABASE) as maintenance:
            pg_restore = find_client("pg_restore", self._server_major(maintenance.cursor()))
            maintenance.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        scratch = Scratch(name, {}, {})
        try:
            with tempfile.NamedTemporaryFile(prefix="aegis-restore-", suffix=".dump") as dump_file:
                dump_file.write(payload)
                dump_file.flush()
                command = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password"]
                result = subprocess.run(  # noqa: S603  # nosec B603
                    [*command, f"--dbname={name}", dump_file.name],
                    env=self._tool_env(name),
                    capture_output=True,
                    check=False,
                )
            if result.returncode != 0:
                raise BackupError(f"pg_restore failed: {result.stderr.decode(errors='replace').strip()}")
            with self._connect(name) as restored:
                cursor = restored.cursor()
                tables = _tables(cursor)
                scratch.row_counts = row_counts(cursor, tables)
                scratch.migrations = applied_migrations(cursor, tables)
        except BaseException:
            self.drop_scratch(scratch)
            raise
        return scratch

    def scratch_settings(self, scratch: Scratch) -> dict[str, Any]:
        options = {key: value for key, value in self.settings_dict.get("OPTIONS", {}).items() if key != "pool"}
        return {**self.settings_dict, "NAME": scratch.name, "OPTIONS": options, "CONN_MAX_AGE": 0}

    def drop_scratch(self, scratch: Scratch) -> None:
        with self._connect(MAINTENANCE_DATABASE) as maintenance:
            maintenance.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch.name)))

    def swap_in(self, scratch: Scratch) -> None:
        """Both renames commit together or not at all, so the live name always points at a whole
        database: the old one or the verified restore. New connections are refused meanwhile."""
        for conn in connections.all():
            conn.close()
            if hasattr(conn, "close_pool"):
                conn.close_pool()
        retired = f"{self.database[:40]}_replaced_{secrets.token_hex(4)}"
        live, retired_name = sql.Identifier(self.database), sql.Identifier(retired)
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        allow = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}")
        with self._connect(MAINTENANCE_DATABASE) as maintenance:
            maintenance.execute(allow.format(live, sql.SQL("false")))
            try:
                self._disconnect_everyone(maintenance)
                with maintenance.transaction():
                    maintenance.execute(rename.format(live, retired_name))
                    maintenance.execute(rename.format(sql.Identifier(scratch.name), live))
            except BaseException:
                maintenance.execute(allow.format(live, sql.SQL("true")))
                raise
            maintenance.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(retired_name))

    def _disconnect_everyone(self, maintenance: psycopg.Connection[Any]) -> None:
        query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 10
        while maintenance.execute(query, [self.database]).fetchall():
            if time.monotonic() > deadline:
                raise BackupError(f"other sessions keep using database {self.database}; stop them and retry")
            time.sleep(0.1)
