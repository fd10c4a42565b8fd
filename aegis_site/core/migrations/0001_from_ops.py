"""AuditEvent and RoleHeartbeat move from ``ops`` to the ground floor: state only, the tables stay.

The content types are renamed (``ops`` → ``core``) so that the permissions granted on them,
e.g. to a group that may view the audit log, keep their rows and their grants.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ("auditevent", "roleheartbeat")


def rename_content_types(apps, schema_editor, old="ops", new="core"):  # type: ignore[no-untyped-def]
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.using(schema_editor.connection.alias).filter(app_label=old, model__in=MOVED).update(
        app_label=new
    )


def restore_content_types(apps, schema_editor):  # type: ignore[no-untyped-def]
    rename_content_types(apps, schema_editor, old="core", new="ops")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
        ("ops", "0003_role_heartbeats"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("actor_label", models.CharField(help_text="Username, 'agent:<id>' or 'system:<role>'.", max_length=150)),
                        ("action", models.CharField(max_length=60)),
                        ("object_type", models.CharField(max_length=40)),
                        ("object_id", models.CharField(max_length=100)),
                        ("data", models.JSONField(blank=True, default=dict)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "audit_events",
                        "ordering": ["-id"],
                        "indexes": [
                            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
                            models.Index(fields=["action"], name="audit_action_idx"),
                            models.Index(fields=["created_at"], name="audit_created_idx"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="RoleHeartbeat",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("role", models.CharField(max_length=20)),
                        ("instance", models.CharField(help_text="host:pid of the process.", max_length=200)),
                        ("beat_at", models.DateTimeField()),
                        ("started_at", models.DateTimeField()),
                        ("info", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "db_table": "role_heartbeats",
                        "indexes": [models.Index(fields=["role", "beat_at"], name="role_heartbeat_recent_idx")],
                        "constraints": [models.UniqueConstraint(fields=("role", "instance"), name="role_heartbeat_unique")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(rename_content_types, restore_content_types),
    ]
