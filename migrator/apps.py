from django.apps import AppConfig


class MigratorConfig(AppConfig):
    name = "migrator"
    verbose_name = "Migrations"

    def ready(self) -> None:
        # Registers the system checks, the publisher of state changes to the
        # live pages, and the sockets' re-check on logout and role changes.
        from . import checks, consumers, live  # noqa: F401
