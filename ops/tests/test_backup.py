"""Backups and restores on the configured engine (SQLite, or PostgreSQL with DATABASE_URL=postgres://...)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from ops.backup import BackupError
from ops.backup.manifest import Manifest, read_archive, sha256, write_archive
from ops.backup.postgres import find_client
from registry.models import Agent
from tasks.actions import submit_job
from tasks.engine.submit import JobSpec
from tasks.models import Job, Task

pytestmark = pytest.mark.django_db(transaction=True)
ENGINE = "postgresql" if connection.vendor == "postgresql" else "sqlite"


@pytest.fixture(autouse=True)
def backup_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY_FILE", raising=False)
    return tmp_path / "backups"


@pytest.fixture
def populated(make_agent: Any) -> dict[str, int]:
    """Agents, jobs, tasks and audit rows, as the application writes them."""
    make_agent("agent-1")
    make_agent("agent-2", labels={"zone": "a"})
    actor = Actor("tester")
    submit_job(JobSpec(kind="echo", target_agent_ids=["agent-1", "agent-2"]), actor)
    submit_job(JobSpec(kind="echo", target_agent_ids=["agent-2"]), actor)
    counts = core_counts()
    assert all(counts.values()), counts
    return counts


def core_counts() -> dict[str, int]:
    return {
        "agents": Agent.objects.count(),
        "jobs": Job.objects.count(),
        "tasks": Task.objects.count(),
        "audit_events": AuditEvent.objects.count(),
    }


def backup(path: Path, *flags: str) -> str:
    out = io.StringIO()
    call_command("backup", "--output", str(path), *flags, stdout=out)
    return out.getvalue()


def restore(path: Path, *flags: str) -> str:
    out = io.StringIO()
    call_command("restore", str(path), *flags, stdout=out)
    return out.getvalue()


def rewrite(path: Path, data: bytes | None = None, fix_checksums: bool = False, **manifest_changes: Any) -> None:
    """Alter an archive as an attacker or a broken disk would; ``fix_checksums`` makes the damage
    pass the sha256 checks so that a later stage has to catch it."""
    manifest, stored = read_archive(path)
    if data is not None:
        stored = data
    manifest = replace(manifest, **manifest_changes)
    if fix_checksums:
        manifest = replace(manifest, data_sha256=sha256(stored), payload_sha256=sha256(stored))
    write_archive(path, manifest, stored)


def use_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", key)
    return key


@pytest.mark.parametrize(
    ("flags", "encrypted"),
    [((), False), (("--no-compress",), False), (("--encrypt",), True), (("--no-compress", "--encrypt"), True)],
)
def test_restore_brings_back_exactly_the_rows_backed_up(
    populated: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], encrypted: bool
) -> None:
    if encrypted:
        use_key(monkeypatch)
    archive = tmp_path / "one.backup"
    summary = backup(archive, *flags)
    assert str(archive) in summary
    Agent.objects.create(pk="added-after-backup", max_concurrency=1)
    Task.objects.all().delete()

    report = restore(archive, "--force")

    assert core_counts() == populated
    assert not Agent.objects.filter(pk="added-after-backup").exists()
    assert "Restore complete." in report


def test_manifest_describes_the_dump(
    populated: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_key(monkeypatch)
    archive = tmp_path / "m.backup"
    backup(archive, "--encrypt")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["data", "manifest.json"]
    manifest, data = read_archive(archive)
    assert manifest.engine == ENGINE
    assert manifest.encrypted
    assert manifest.compressed
    assert manifest.data_sha256 == sha256(data)
    assert "0001_initial" in manifest.migrations["tasks"]
    assert {table: manifest.row_counts[table] for table in populated} == populated
    assert "django_migrations" in manifest.row_counts
    assert manifest.created_at.endswith("+00:00")


def test_default_path_is_in_backup_dir(populated: dict[str, int], backup_env: Path) -> None:
    out = io.StringIO()
    call_command("backup", stdout=out)
    [archive] = backup_env.glob(f"aegis-{ENGINE}-*.backup")
    assert str(archive) in out.getvalue()
    assert archive.stat().st_mode & 0o077 == 0


def test_encrypt_without_a_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--encrypt needs a key"):
        backup(tmp_path / "x.backup", "--encrypt")
    assert not (tmp_path / "x.backup").exists()


def test_a_flipped_byte_is_refused_and_nothing_changes(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "t.backup"
    backup(archive)
    manifest, data = read_archive(archive)
    flipped = bytes([data[len(data) // 2] ^ 0x01])
    write_archive(archive, manifest, data[: len(data) // 2] + flipped + data[len(data) // 2 + 1 :])

    with pytest.raises(CommandError, match="does not match the manifest's sha256"):
        restore(archive, "--force")
    assert core_counts() == populated


def test_a_wrong_or_missing_key_is_refused(
    populated: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_key(monkeypatch)
    archive = tmp_path / "k.backup"
    backup(archive, "--encrypt")
    use_key(monkeypatch)
    with pytest.raises(CommandError, match="wrong BACKUP_ENCRYPTION_KEY"):
        restore(archive, "--force")
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY")
    with pytest.raises(CommandError, match="the archive is encrypted"):
        restore(archive, "--force")
    assert core_counts() == populated


def test_a_key_file_is_read(populated: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(Fernet.generate_key().decode() + "\n")
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY_FILE", str(key_file))
    archive = tmp_path / "f.backup"
    backup(archive, "--encrypt")
    restore(archive, "--force")
    assert core_counts() == populated


def test_a_backup_of_another_engine_is_refused(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "e.backup"
    backup(archive)
    other = "sqlite" if ENGINE == "postgresql" else "postgresql"
    rewrite(archive, engine=other)
    with pytest.raises(CommandError, match=f"this is a {other} backup and this installation runs {ENGINE}"):
        restore(archive, "--force")


def test_a_backup_newer_than_the_code_is_refused(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "n.backup"
    backup(archive)
    manifest, _data = read_archive(archive)
    rewrite(archive, migrations={**manifest.migrations, "tasks": [*manifest.migrations["tasks"], "9999_future"]})
    with pytest.raises(CommandError, match=r"newer than this code.*tasks\.9999_future"):
        restore(archive, "--force")
    assert core_counts() == populated


def test_a_non_empty_database_is_refused_without_force(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "f.backup"
    backup(archive)
    Agent.objects.create(pk="would-be-lost", max_concurrency=1)
    with pytest.raises(CommandError, match=r"not empty \(agents.*pass --force"):
        restore(archive)
    assert Agent.objects.filter(pk="would-be-lost").exists()


def test_an_empty_database_is_restored_without_force(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "empty.backup"
    backup(archive)
    call_command("flush", interactive=False, verbosity=0)
    restore(archive)
    assert core_counts() == populated


def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.backup"
    with tarfile.open(archive, "w") as tar:
        for name, content in (("manifest.json", b"{not json"), ("data", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    with pytest.raises(CommandError, match="manifest is not valid JSON"):
        restore(archive, "--force")
    with pytest.raises(BackupError, match="lacks"):
        Manifest.from_json(b'{"format_version": 1}')


@pytest.mark.postgres
def test_an_older_client_than_the_server_is_refused_naming_both_versions() -> None:
    with pytest.raises(BackupError, match=r"PostgreSQL 99 or newer.*is version \d+.*postgresql-client-99"):
        find_client("pg_dump", 99)
