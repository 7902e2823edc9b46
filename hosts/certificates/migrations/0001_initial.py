# The certificate models as they came from the hosts app, on the tables it
# created (hosts_certificate, hosts_hosttls): state only, no data moves.

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

MODELS = ('certificate', 'hosttls')


def content_types_follow(apps, schema_editor, old='hosts', new='certificates'):
    """Permissions on the models keep pointing at them under the new label."""
    ContentType = apps.get_model('contenttypes', 'ContentType')
    for model in MODELS:
        if not ContentType.objects.filter(app_label=new, model=model).exists():
            ContentType.objects.filter(app_label=old, model=model).update(app_label=new)


def content_types_go_back(apps, schema_editor):
    content_types_follow(apps, schema_editor, old='certificates', new='hosts')


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('hosts', '0003_certificates_app'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Certificate',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(choices=[('ca', 'CA certificate'), ('client', 'Client certificate'), ('server', 'Migration server certificate')], max_length=8)),
                        ('name', models.CharField(max_length=200)),
                        ('pem', models.TextField()),
                        ('subject', models.TextField()),
                        ('common_name', models.CharField(blank=True, max_length=255)),
                        ('issuer', models.TextField()),
                        ('serial_hex', models.CharField(max_length=80)),
                        ('fingerprint_sha256', models.CharField(max_length=95)),
                        ('sans', models.JSONField(blank=True, default=list)),
                        ('key_usage', models.JSONField(blank=True, default=list)),
                        ('extended_key_usage', models.JSONField(blank=True, default=list)),
                        ('is_ca', models.BooleanField(default=False)),
                        ('not_before', models.DateTimeField()),
                        ('not_after', models.DateTimeField()),
                        ('public_key_type', models.CharField(max_length=16)),
                        ('public_key_bits', models.PositiveIntegerField(default=0)),
                        ('encrypted_key', models.BinaryField(blank=True, null=True)),
                        ('active', models.BooleanField(default=True)),
                        ('retired_at', models.DateTimeField(blank=True, null=True)),
                        ('warnings', models.JSONField(blank=True, default=list)),
                        ('uploaded_by_username', models.CharField(blank=True, max_length=150)),
                        ('uploaded_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('ca', models.ForeignKey(blank=True, help_text='The CA on record that issued this certificate.', limit_choices_to={'kind': 'ca'}, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='issued', to='certificates.certificate')),
                        ('host', models.ForeignKey(blank=True, help_text='For migration server certificates: the host it is deployed on.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='server_certificates', to='hosts.host')),
                        ('replaces', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='replacements', to='certificates.certificate')),
                        ('uploaded_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'hosts_certificate',
                        'ordering': ['not_after', 'pk'],
                        'constraints': [
                            models.UniqueConstraint(condition=models.Q(('active', True)), fields=('kind', 'fingerprint_sha256'), name='certificate_on_record_once'),
                            models.UniqueConstraint(condition=models.Q(('active', True), ('kind', 'server')), fields=('host',), name='one_migration_certificate_per_host'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='HostTLS',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('assigned_by_username', models.CharField(blank=True, max_length=150)),
                        ('assigned_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('assigned_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('ca', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='ca_for_hosts', to='certificates.certificate')),
                        ('client', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='client_for_hosts', to='certificates.certificate')),
                        ('host', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='tls', to='hosts.host')),
                    ],
                    options={
                        'db_table': 'hosts_hosttls',
                        'verbose_name': 'host TLS material',
                        'verbose_name_plural': 'host TLS material',
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_follow, content_types_go_back),
    ]
