# AuditEvent moved to its own app (migrator.audit, label "audit"), which keeps
# the table migrator_auditevent: only the migration state changes.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("migrator", "0004_sample_disk_throughput"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")],
            database_operations=[],
        ),
    ]
