"""Database triggers that keep the audit table append-only below the ORM.

AppendOnlyQuerySet refuses the ORM's update and delete paths; these triggers
refuse the same through raw SQL: UPDATE and DELETE on SQLite, and on
PostgreSQL UPDATE, DELETE and TRUNCATE too. The one UPDATE let through
clears a set `actor_id` and changes nothing else: Django does that when the
actor's user is deleted (on_delete=SET_NULL); the actor's name, which the
hash covers, stays.

A role that owns the table can still drop or disable the triggers, and raw
INSERTs cannot be refused at all: the keyed chain (`migrator.audit.chain`)
and the anchors (`migrator.audit.anchor`) are what catch those.

Installed by migration audit.0003, and again after every `migrate` (a
table that SQLite rebuilds for a schema change loses its triggers), and put
back by `manage.py flush`, which drops them to empty the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction

TABLE = "migrator_auditevent"
MIGRATION = ("audit", "0003_append_only_triggers")
UPDATE_TRIGGER = f"{TABLE}_no_update"
DELETE_TRIGGER = f"{TABLE}_no_delete"
TRUNCATE_TRIGGER = f"{TABLE}_no_truncate"
PG_FUNCTION = f"{TABLE}_append_only"
REFUSED = "audit events are append-only"

_PG_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Deleting a user sets actor_id to NULL (on_delete=SET_NULL): let
        -- that through when nothing else changes.
        IF OLD.actor_id IS NOT NULL AND NEW.actor_id IS NULL
                AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION '{REFUSED}: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$body$
"""


def triggers(connection) -> tuple[str, ...]:
    if connection.vendor == "postgresql":
        return (UPDATE_TRIGGER, DELETE_TRIGGER, TRUNCATE_TRIGGER)
    if connection.vendor == "sqlite":
        return (UPDATE_TRIGGER, DELETE_TRIGGER)
    return ()


def _table_exists(connection) -> bool:
    with connection.cursor() as cursor:
        return TABLE in connection.introspection.table_names(cursor)


def _settle_deferred(connection) -> None:
    """PostgreSQL refuses ALTER TABLE on a table with deferred constraint
    checks pending in the transaction (rows just inserted): run them now."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        connection.check_constraints()


def install(connection) -> None:
    """Create (or re-create) the triggers; idempotent."""
    if not triggers(connection) or not _table_exists(connection):
        return
    quote = connection.ops.quote_name
    _settle_deferred(connection)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            columns = [c.name for c in connection.introspection.get_table_description(cursor, TABLE)]
            changed = " OR ".join(f"NEW.{quote(c)} IS NOT OLD.{quote(c)}" for c in columns if c != "actor_id")
            cursor.execute(f"DROP TRIGGER IF EXISTS {UPDATE_TRIGGER}")
            cursor.execute(
                f"CREATE TRIGGER {UPDATE_TRIGGER} BEFORE UPDATE ON {quote(TABLE)} "
                f"WHEN OLD.actor_id IS NULL OR NEW.actor_id IS NOT NULL OR {changed} "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSED}: UPDATE refused on {TABLE}'); END"
            )
            cursor.execute(f"DROP TRIGGER IF EXISTS {DELETE_TRIGGER}")
            cursor.execute(
                f"CREATE TRIGGER {DELETE_TRIGGER} BEFORE DELETE ON {quote(TABLE)} "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSED}: DELETE refused on {TABLE}'); END"
            )
        else:
            cursor.execute(_PG_FUNCTION_SQL)
            for name, when, each in (
                (UPDATE_TRIGGER, "UPDATE", "ROW"),
                (DELETE_TRIGGER, "DELETE", "ROW"),
                (TRUNCATE_TRIGGER, "TRUNCATE", "STATEMENT"),
            ):
                cursor.execute(
                    f"CREATE OR REPLACE TRIGGER {name} BEFORE {when} ON {quote(TABLE)} "
                    f"FOR EACH {each} EXECUTE FUNCTION {PG_FUNCTION}()"
                )
                # A trigger someone disabled is enabled again.
                cursor.execute(f"ALTER TABLE {quote(TABLE)} ENABLE TRIGGER {name}")


def remove(connection) -> None:
    if not triggers(connection) or not _table_exists(connection):
        return
    quote = connection.ops.quote_name
    _settle_deferred(connection)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for name in triggers(connection):
            if connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {quote(TABLE)}")
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")


def _found(connection) -> dict[str, str]:
    """The table's triggers by name, with PostgreSQL's tgenabled ('D': disabled)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name, 'O' FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [TABLE])
        else:
            cursor.execute(
                "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
                [TABLE],
            )
        return {name: str(enabled) for name, enabled in cursor.fetchall()}


def problems(connection) -> list[str] | None:
    """What is wrong with the triggers ([] when all are in place), or None
    on a database without them."""
    expected = triggers(connection)
    if not expected:
        return None
    found = _found(connection)
    missing = [name for name in expected if name not in found]
    disabled = [name for name in expected if found.get(name) == "D"]
    return ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"disabled: {', '.join(disabled)}"] if disabled else []
    )


@contextmanager
def suspended(connection) -> Iterator[None]:
    """Drop the triggers for the block and put them back after it, in one
    transaction: for `manage.py flush`, which empties every table."""
    if not triggers(connection) or not _table_exists(connection):
        yield
        return
    with transaction.atomic(using=connection.alias):
        had_them = bool(set(triggers(connection)) & set(_found(connection)))
        remove(connection)
        yield
        if had_them:
            install(connection)


def install_after_migrate(sender, using: str = "default", **kwargs) -> None:
    """post_migrate: put the triggers (back) once audit.0003 is applied."""
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    connection = connections[using]
    if MIGRATION in MigrationRecorder(connection).applied_migrations():
        install(connection)
