"""A failed restore changes nothing; the drill proves a backup restores and leaves nothing behind."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from ops.backup.manifest import read_archive
from ops.tests.test_backup import backup, backup_env, core_counts, populated, restore, rewrite

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["backup_env", "populated"]  # fixtures used here


@pytest.fixture(autouse=True)
def _present_before(transactional_db: None) -> None:
    """Scratch-like names that existed before the test (another run's databases on a shared server) are not ours."""
    global _BEFORE
    _BEFORE = set(_scratch_like())


_BEFORE: set[str] = set()


def scratch_leftovers() -> list[str]:
    """What this test left behind that looks like a scratch database or file."""
    return [name for name in _scratch_like() if name not in _BEFORE]


def _scratch_like() -> list[str]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
                ["%drill%", f"{connection.settings_dict['NAME']}_%"],
            )
            return [name for (name,) in cursor.fetchall()]
    name = Path(connection.settings_dict["NAME"]).name
    places = [Path(tempfile.gettempdir()), Path(connection.settings_dict["NAME"]).parent]
    return [str(path) for place in places for path in place.glob(f".{name}.*")]


def drill(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("disaster_recovery", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def truncate_dump(archive: Path) -> None:
    """A dump cut short whose checksums were updated to match: only the restore itself can notice."""
    _manifest, data = read_archive(archive)
    rewrite(archive, data=data[: len(data) // 2], fix_checksums=True)


def test_a_restore_that_fails_midway_leaves_the_database_as_it_was(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "cut.backup"
    backup(archive, "--no-compress")
    truncate_dump(archive)

    with pytest.raises(CommandError, match="restore"):
        restore(archive, "--force")

    assert core_counts() == populated
    assert scratch_leftovers() == []


def test_a_restored_copy_with_other_counts_is_never_swapped_in(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "counts.backup"
    backup(archive)
    manifest, _data = read_archive(archive)
    rewrite(archive, row_counts={**manifest.row_counts, "agents": 999})
    call_command("flush", interactive=False, verbosity=0)

    with pytest.raises(CommandError, match="live database was left as it was: agents: manifest 999, database 2"):
        restore(archive, "--force")

    assert core_counts()["agents"] == 0
    assert scratch_leftovers() == []


def test_the_drill_passes_on_a_good_backup_and_leaves_no_scratch_database(
    populated: dict[str, int], tmp_path: Path
) -> None:
    archive = tmp_path / "good.backup"
    backup(archive)

    code, out = drill("--restore", str(archive))

    assert code == 0, out
    assert out.rstrip().endswith("PASS")
    assert f"query agents: {populated['agents']} rows" in out
    assert f"query tasks: {populated['tasks']} rows" in out
    assert scratch_leftovers() == []
    assert core_counts() == populated


def test_the_drill_fails_on_a_backup_that_does_not_restore(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "bad.backup"
    backup(archive, "--no-compress")
    truncate_dump(archive)

    code, out = drill("--restore", str(archive))

    assert code == 1
    assert "[FAILED] restore" in out
    assert out.rstrip().endswith("FAIL")
    assert scratch_leftovers() == []


def test_the_drill_fails_when_the_counts_differ_from_the_manifest(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "lying.backup"
    backup(archive)
    manifest, _data = read_archive(archive)
    rewrite(archive, row_counts={**manifest.row_counts, "tasks": 0})

    code, out = drill("--restore", str(archive))

    assert code == 1
    assert "[FAILED] row counts: tasks: manifest 0" in out
    assert "[FAILED] query tasks" in out
    assert scratch_leftovers() == []


def test_verify_checks_the_archive_without_restoring(populated: dict[str, int], tmp_path: Path) -> None:
    archive = tmp_path / "v.backup"
    backup(archive)
    assert drill("--verify", str(archive))[0] == 0
    _manifest, data = read_archive(archive)
    rewrite(archive, data=data[:-1] + bytes([data[-1] ^ 0xFF]))

    code, out = drill("--verify", str(archive))

    assert code == 1
    assert "[FAILED] archive" in out
    assert "sha256" in out


def test_latest_is_the_newest_backup_in_backup_dir(populated: dict[str, int], backup_env: Path) -> None:
    older, newer = backup_env / "aegis-a.backup", backup_env / "aegis-b.backup"
    backup(older)
    backup(newer)
    os.utime(older, (time.time() + 60, time.time() + 60))

    code, out = drill("--verify", "latest")

    assert code == 0
    assert f"Drill on {older}" in out


def test_latest_without_any_backup_is_an_error() -> None:
    with pytest.raises(CommandError, match="no backup"):
        call_command("disaster_recovery", "--restore", "latest")
