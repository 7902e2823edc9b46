from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "migrator.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        # Registers the receivers that audit logins, role and superuser changes.
        from . import signals  # noqa: F401
