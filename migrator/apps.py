from django.apps import AppConfig


class MigratorConfig(AppConfig):
    name = "migrator"
    verbose_name = "Migrations"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
