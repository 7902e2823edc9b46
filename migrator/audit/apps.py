from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AuditConfig(AppConfig):
    name = "migrator.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        # Registers the receivers that audit logins, role and superuser changes.
        from . import guard, signals  # noqa: F401

        # The append-only triggers, put back after any migration (SQLite
        # rebuilds a table for most schema changes, and drops its triggers).
        post_migrate.connect(guard.install_after_migrate, sender=self, dispatch_uid="audit_append_only_triggers")
