from django.apps import AppConfig


class MigratorConfig(AppConfig):
    name = "migrator"
    verbose_name = "Migrations"

    def ready(self) -> None:
        # Registers the system checks, the publisher of state changes to the
        # live pages, the sockets' re-check on logout and role changes, and
        # the queue's dispatch when a migration frees its slots, and the end
        # of a batch when its last migration ends.
        from . import checks, consumers, jobs, live  # noqa: F401
        from .fleet import batches  # noqa: F401
