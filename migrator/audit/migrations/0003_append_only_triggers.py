# Triggers that refuse UPDATE and DELETE on the audit table (and TRUNCATE on
# PostgreSQL) from raw SQL too: migrator.audit.guard. Created after the
# re-keying, which rewrites every row.

from django.db import migrations


def install(apps, schema_editor):
    from migrator.audit import guard

    guard.install(schema_editor.connection)


def remove(apps, schema_editor):
    from migrator.audit import guard

    guard.remove(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_hmac_chain")]

    operations = [migrations.RunPython(install, remove)]
