"""System checks that warn about settings that are fine for the demo only."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def unsafe_production_settings(app_configs, **kwargs) -> list[Warning]:
    warnings = []
    if settings.SECRET_KEY == settings.DEMO_SECRET_KEY:
        warnings.append(
            Warning(
                "SECRET_KEY is the built-in demo key.",
                hint="Set the SECRET_KEY environment variable to a long random value.",
                id="migrator.W001",
            )
        )
    if settings.DEBUG:
        warnings.append(
            Warning(
                "DEBUG is on: error pages would show settings and code to users.",
                hint="Set DEBUG=False in the environment.",
                id="migrator.W002",
            )
        )
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        warnings.append(
            Warning(
                "The database is SQLite: fine for the demo, not for several workers.",
                hint="Set DATABASE_URL=postgres://user@host/dbname.",
                id="migrator.W003",
            )
        )
    if not settings.SECRETS_KEYS:
        warnings.append(
            Warning(
                "Private keys are encrypted with a key read from a file next to the code.",
                hint="Set SECRETS_KEYS to a Fernet key kept outside the server's disk image.",
                id="migrator.W004",
            )
        )
    if not settings.AUDIT_KEY and not settings.DEVELOPMENT:
        warnings.append(
            Warning(
                "The audit chain's key is derived from SECRET_KEY: changing SECRET_KEY would break the chain.",
                hint="Set AUDIT_KEY to its own long random value (README, 'Running in production').",
                id="migrator.W005",
            )
        )
    return warnings
