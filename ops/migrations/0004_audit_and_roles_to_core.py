"""AuditEvent and RoleHeartbeat now belong to the ground floor (``core.0001_from_ops``): state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0003_role_heartbeats"),
        ("core", "0001_from_ops"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent"), migrations.DeleteModel(name="RoleHeartbeat")],
            database_operations=[],
        ),
    ]
