"""The audit log and role heartbeats moved from ``ops`` to the ground floor (``core``) without losing grants.

``core.0001_from_ops`` renames the two content types; a group allowed to view the audit log
before the upgrade (``ops.view_auditevent``) may still view it after (``core.view_auditevent``).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection

from aegis_site.core.models import AuditEvent, RoleHeartbeat
from tests.runbook import ScratchDatabase

pytestmark = pytest.mark.django_db

move = importlib.import_module("aegis_site.core.migrations.0001_from_ops")


def test_the_tables_keep_their_names() -> None:
    assert AuditEvent._meta.db_table == "audit_events"
    assert RoleHeartbeat._meta.db_table == "role_heartbeats"
    assert AuditEvent._meta.app_label == "core"


def test_a_grant_made_before_the_move_holds_after_it() -> None:
    ContentType.objects.filter(app_label="core", model="auditevent").delete()  # as before the upgrade
    before = ContentType.objects.create(app_label="ops", model="auditevent")
    permission = Permission.objects.create(content_type=before, codename="view_auditevent", name="Can view audit event")
    auditors = Group.objects.create(name="auditors")
    auditors.permissions.add(permission)
    user = User.objects.create_user("auditor", is_staff=True)
    user.groups.add(auditors)

    move.rename_content_types(apps, SimpleNamespace(connection=connection))

    ContentType.objects.clear_cache()
    assert ContentType.objects.get_for_model(AuditEvent).pk == before.pk
    assert User.objects.get(pk=user.pk).has_perm("core.view_auditevent")
    assert not ContentType.objects.filter(app_label="ops", model="auditevent").exists()


@pytest.mark.postgres
def test_the_documented_rollback_undoes_the_rename_and_the_upgrade_redoes_it(tmp_path) -> None:
    """docs/deployment.md's rollback (``manage.py migrate core zero``), on a database of its own."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (run with DATABASE_URL=postgres://...)")
    scratch = ScratchDatabase(os.environ["DATABASE_URL"])
    scratch.create()
    env = {**os.environ, "DATABASE_URL": scratch.url, "DATA_DIR": str(tmp_path)}

    def manage(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "manage.py", *args, "--noinput"],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def labels() -> set[str]:
        with psycopg.connect(scratch.url) as db:
            rows = db.execute("SELECT app_label FROM django_content_type WHERE model = 'auditevent'").fetchall()
        return {row[0] for row in rows}

    try:
        manage("migrate")
        assert labels() == {"core"}
        manage("migrate", "core", "zero")
        assert labels() == {"ops"}
        manage("migrate")
        assert labels() == {"core"}
    finally:
        scratch.drop()
