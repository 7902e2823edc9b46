from django.apps import AppConfig


class MigratorConfig(AppConfig):
    name = "migrator"
    verbose_name = "Migrations"

    def ready(self) -> None:
        # Registers the system checks and the audit signal receivers.
        from . import checks, signals  # noqa: F401
