"""The audit log and role heartbeats moved from ``ops`` to the ground floor (``core``) without losing grants.

``core.0001_from_ops`` renames the two content types; a group allowed to view the audit log
before the upgrade (``ops.view_auditevent``) may still view it after (``core.view_auditevent``).
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection

from aegis_site.core.models import AuditEvent, RoleHeartbeat

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
