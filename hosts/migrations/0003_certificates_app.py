# The certificate models moved to their own app (hosts.certificates, label
# "certificates"), which keeps their tables: only the migration state changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('hosts', '0002_certificates'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='HostTLS'),
                migrations.DeleteModel(name='Certificate'),
            ],
            database_operations=[],
        ),
    ]
