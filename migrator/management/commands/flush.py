"""Django's flush, around the audit table's triggers: they refuse DELETE
(and on PostgreSQL TRUNCATE), so flush drops them for its own statements and
puts them back in the same transaction. The test suite's transactional
tests flush after each test. An emptied audit log is still caught, by the
anchors (`verify_audit`)."""

from __future__ import annotations

from django.core.management.commands.flush import Command as FlushCommand
from django.db import DEFAULT_DB_ALIAS, connections

from migrator.audit import guard


class Command(FlushCommand):
    def handle(self, **options) -> None:
        with guard.suspended(connections[options.get("database") or DEFAULT_DB_ALIAS]):
            super().handle(**options)
