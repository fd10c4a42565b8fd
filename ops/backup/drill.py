"""The disaster-recovery drill: prove a backup restores, without touching the live database."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.apps import apps
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import load_backend

from ops.backup import BackupError
from ops.backup.engine import Engine, Scratch
from ops.backup.manifest import Manifest
from ops.backup.service import check_compatible, current_engine, open_archive
from ops.backup.tables import count_differences

# Models whose counts the smoke check reads through the ORM (app label, model name).
SMOKE_MODELS = (("registry", "Agent"), ("tasks", "Job"), ("tasks", "Task"), ("core", "AuditEvent"))


@dataclass
class DrillReport:
    path: Path
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _name, ok, _detail in self.checks)

    def record(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        return ok


def verify(path: Path) -> tuple[DrillReport, Manifest | None, bytes]:
    """Archive-level checks only: readable, checksums, key, engine and migration compatibility."""
    report = DrillReport(path)
    try:
        manifest, payload = open_archive(path)
    except BackupError as error:
        report.record("archive", False, str(error))
        return report, None, b""
    report.record("archive", True, f"{manifest.engine} backup of {manifest.created_at}, checksums match")
    try:
        check_compatible(manifest, current_engine())
    except BackupError as error:
        report.record("compatible", False, str(error))
        return report, manifest, payload
    report.record("compatible", True, "same engine, every migration known to this code")
    return report, manifest, payload


def drill(path: Path) -> DrillReport:
    """Restore into a scratch database, compare it with the manifest, query it through the ORM,
    and always drop the scratch database."""
    report, manifest, payload = verify(path)
    if not report.passed or manifest is None:
        return report
    engine = current_engine()
    try:
        scratch = engine.restore_scratch(payload, "drill")
    except BackupError as error:
        report.record("restore", False, str(error))
        return report
    try:
        report.record("restore", True, f"restored into scratch {scratch.name}")
        differences = count_differences(manifest.row_counts, scratch.row_counts)
        report.record(
            "row counts",
            not differences,
            "; ".join(differences) or f"{len(manifest.row_counts)} tables, {manifest.total_rows} rows as recorded",
        )
        report.record(
            "migrations",
            scratch.migrations == manifest.migrations,
            "as recorded" if scratch.migrations == manifest.migrations else "differ from the manifest",
        )
        _smoke(engine, scratch, manifest, report)
    finally:
        engine.drop_scratch(scratch)
    return report


@contextmanager
def _scratch_alias(engine: Engine, scratch: Scratch) -> Iterator[str]:
    """A connection the ORM reaches by alias, kept out of ``settings.DATABASES``: nothing else
    (migrate, the test runner, routers) ever sees it."""
    alias = f"backup_drill_{secrets.token_hex(4)}"
    config = engine.scratch_settings(scratch)
    wrapper = load_backend(config["ENGINE"]).DatabaseWrapper(config, alias)
    connections[alias] = wrapper
    try:
        yield alias
    finally:
        wrapper.close()
        del connections[alias]


def _smoke(engine: Engine, scratch: Scratch, manifest: Manifest, report: DrillReport) -> None:
    with _scratch_alias(engine, scratch) as alias:
        try:
            call_command("check", databases=[alias], stdout=io.StringIO(), stderr=io.StringIO())
            report.record("django checks", True)
        except SystemCheckError as error:
            report.record("django checks", False, str(error))
        for app_label, model_name in SMOKE_MODELS:
            model = apps.get_model(app_label, model_name)
            table = model._meta.db_table
            try:
                count = model._base_manager.using(alias).count()
            except Exception as error:  # any database error is the finding
                report.record(f"query {table}", False, str(error))
                continue
            expected = manifest.row_counts.get(table)
            report.record(f"query {table}", count == expected, f"{count} rows (manifest {expected})")
        executor = MigrationExecutor(connections[alias])
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        latest = {app: names[-1] for app, names in sorted(scratch.migrations.items()) if app in SMOKE_APPS}
        detail = ", ".join(f"{app}.{name}" for app, name in latest.items())
        if plan:
            detail += f"; a restore would then apply {len(plan)} newer migration(s)"
        report.record("latest migration", bool(latest), detail)


SMOKE_APPS = {app for app, _model in SMOKE_MODELS}
