from django.apps import AppConfig


class MigratorConfig(AppConfig):
    name = "migrator"
    verbose_name = "Migrations"

    def ready(self) -> None:
        # Registers the system checks and the publisher of state changes to
        # the live pages.
        from . import checks, live  # noqa: F401
