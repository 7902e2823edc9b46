# The audit chain keyed: every event re-sealed with an HMAC-SHA256 under the
# audit key (migrator.audit.chain) instead of a plain SHA-256, after checking
# the old chain; one `audit.rekeyed` event records how many events were
# re-sealed, the old head's hash, and where the old chain was broken if it was.

from django.db import migrations


def rekey(apps, schema_editor):
    from migrator.audit.rekey import rechain

    rechain(apps.get_model("audit", "AuditEvent"))


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    # The old hashes are gone once re-sealed: going back leaves the keyed chain.
    operations = [migrations.RunPython(rekey, migrations.RunPython.noop)]
