"""The environment of a process a test starts (Daphne, `manage.py worker`):
the test database and the tests' Redis and channel prefix, so that the child
and the test see the same records, queue and groups."""

from __future__ import annotations

import os

from django.conf import settings
from django.db import connection


def database_url() -> str:
    """The URL of the database this test runs on."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    return f"postgres://{user}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def child_env(**more: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEMO": "1",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CHANNELS_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        **more,
    }
