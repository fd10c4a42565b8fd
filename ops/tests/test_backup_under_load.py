"""Backup while writes continue, with thousands of tasks and events: wipe, restore, nothing committed before is lost."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import close_old_connections, connection

from aegis_site.core.audit import Actor
from tasks.actions import submit_job
from tasks.engine.submit import JobSpec
from tasks.models import Job, Task, TaskEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def backup_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)


def ids() -> dict[str, set[int]]:
    return {
        "jobs": set(Job.objects.values_list("id", flat=True)),
        "tasks": set(Task.objects.values_list("id", flat=True)),
        "events": set(TaskEvent.objects.values_list("id", flat=True)),
    }


def test_a_backup_taken_during_writes_restores_every_row_committed_before_it(make_agent: Any, tmp_path: Path) -> None:
    make_agent("load-1")
    actor = Actor("tester")
    # 3,000 tasks and 3,000 events
    submit_job(JobSpec(kind="echo", mode="any", task_count=3000, target_all=True), actor)
    before = ids()
    assert len(before["tasks"]) == 3000
    assert len(before["events"]) >= 3000

    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set():
                job, _ = submit_job(JobSpec(kind="echo", mode="any", task_count=20, target_all=True), actor)
                written.append(job.pk)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            close_old_connections()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        archive = tmp_path / "live.backup"
        call_command("backup", "--output", str(archive), stdout=io.StringIO())
    finally:
        stop.set()
        writer.join(60)
    assert not errors, errors
    assert written, "the writer committed nothing while the backup ran"

    with connection.cursor() as cursor:  # wipe
        Task.objects.all().delete()
        Job.objects.all().delete()
        cursor.execute("DELETE FROM task_events")
    assert Task.objects.count() == 0

    report = io.StringIO()
    call_command("restore", str(archive), "--force", stdout=report)
    after = ids()
    for table, present in before.items():
        assert present <= after[table], (
            f"{table}: {len(present - after[table])} rows committed before the backup are missing"
        )
    assert "Restore complete." in report.getvalue()
