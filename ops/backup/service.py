"""Making a backup and restoring one: the functions the management commands call."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import django
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from ops.backup import BackupError
from ops.backup.config import backup_config
from ops.backup.crypto import seal, unseal
from ops.backup.engine import Engine, engine_for
from ops.backup.manifest import FORMAT_VERSION, Manifest, read_archive, sha256, utc_now, write_archive
from ops.backup.tables import count_differences, live_row_counts, project_tables_with_rows, unknown_migrations


def current_engine() -> Engine:
    return engine_for(connection.settings_dict)


def default_path(directory: Path, engine: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"aegis-{engine}-{stamp}.backup"
    serial = 1
    while path.exists():
        path = directory / f"aegis-{engine}-{stamp}-{serial}.backup"
        serial += 1
    return path


def latest_backup() -> Path:
    directory = backup_config().directory
    candidates = sorted(directory.glob("*.backup"), key=lambda path: (path.stat().st_mtime, path.name))
    if not candidates:
        raise BackupError(f"no backup (*.backup) in BACKUP_DIR {directory}")
    return candidates[-1]


def resolve(argument: str) -> Path:
    return latest_backup() if argument == "latest" else Path(argument)


def create_backup(output: Path | None, compress: bool = True, encrypt: bool = False) -> tuple[Path, Manifest]:
    config = backup_config()
    if encrypt and config.encryption_key is None:
        raise BackupError("--encrypt needs a key: set BACKUP_ENCRYPTION_KEY or BACKUP_ENCRYPTION_KEY_FILE")
    engine = current_engine()
    dump = engine.dump(compress)
    data = seal(dump.payload, compress, config.encryption_key if encrypt else None)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        engine=engine.name,
        database=dump.database,
        django_version=django.get_version(),
        created_at=utc_now(),
        migrations=dump.migrations,
        row_counts=dump.row_counts,
        data_sha256=sha256(data),
        payload_sha256=sha256(dump.payload),
        compressed=compress,
        encrypted=encrypt,
    )
    path = output or default_path(config.directory, engine.name)
    write_archive(path, manifest, data)
    return path, manifest


def open_archive(path: Path) -> tuple[Manifest, bytes]:
    """The manifest and the engine's dump, both checksums verified."""
    manifest, data = read_archive(path)
    return manifest, unseal(data, manifest, backup_config().encryption_key)


def check_compatible(manifest: Manifest, engine: Engine) -> None:
    if manifest.engine != engine.name:
        raise BackupError(
            f"this is a {manifest.engine} backup and this installation runs {engine.name}: "
            "an engine's dump restores only into the same engine (move data across engines with dumpdata/loaddata)"
        )
    unknown = unknown_migrations(manifest.migrations)
    if unknown:
        raise BackupError(
            "the backup is newer than this code: it records migrations this code does not have "
            f"({', '.join(unknown)}); deploy the code version that made the backup, or a newer one, first"
        )


def pending_migrations() -> list[str]:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


@dataclass
class RestoreReport:
    manifest: Manifest
    row_counts: dict[str, int]
    differences: list[str] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Migrations applied after the restore may legitimately add rows (their own records,
        permissions); without them the counts must be equal."""
        return not self.differences or bool(self.migrated)


def restore(path: Path, force: bool = False) -> RestoreReport:
    engine = current_engine()
    manifest, payload = open_archive(path)
    check_compatible(manifest, engine)
    if not force:
        filled = project_tables_with_rows()
        if filled:
            raise BackupError(
                f"the database is not empty ({', '.join(filled)} hold rows); pass --force to replace it with the backup"
            )
    scratch = engine.restore_scratch(payload, "restore")
    try:
        differences = count_differences(manifest.row_counts, scratch.row_counts)
        if differences:
            raise BackupError(
                "the restored copy does not match the manifest, the live database was left as it was: "
                + "; ".join(differences)
            )
        engine.swap_in(scratch)
    finally:
        engine.drop_scratch(scratch)  # a no-op once swapped in
    migrated = pending_migrations()
    call_command("migrate", interactive=False, verbosity=0)
    counts = live_row_counts()
    return RestoreReport(manifest, counts, count_differences(manifest.row_counts, counts), migrated)
