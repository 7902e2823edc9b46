"""The audit log against someone who can write its table: the keyed chain,
the append-only guards (ORM and database triggers), the signed anchors that
catch a deleted tail, the worker's periodic anchor, the audit events of every
migration outcome, and the migration that re-keys an old SHA-256 chain."""

from __future__ import annotations

import json
import logging
import os
import stat
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from migrator import jobs
from migrator.audit import anchor, chain, guard
from migrator.audit.models import AppendOnlyError, AuditEvent
from migrator.audit.rekey import rechain
from migrator.models import MigrationState

from .test_migration_model import make_migration

TABLE = AuditEvent._meta.db_table


@pytest.fixture(autouse=True)
def anchor_dir(settings, tmp_path):
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"
    return settings.AUDIT_ANCHOR_DIR


# ------------------------------------------------------------ helpers


@contextmanager
def with_table_rights():
    """Someone who owns the table: the triggers off, as an attacker would
    (PostgreSQL: ALTER TABLE … DISABLE TRIGGER USER; SQLite: DROP TRIGGER)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The test's rows were inserted in this transaction: their
            # deferred foreign key checks must run before an ALTER TABLE.
            connection.check_constraints()
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        else:
            for name in guard.triggers(connection):
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
    try:
        yield
    finally:
        guard.install(connection)


def tamper(pk: int, **fields) -> None:
    with with_table_rights():
        AuditEvent._base_manager.filter(pk=pk).update(**fields)


def verify(*args: str) -> str:
    out = StringIO()
    call_command("verify_audit", *args, stdout=out)
    return out.getvalue()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as caught:
        verify(*args)
    assert caught.value.returncode == 1
    return str(caught.value)


def chain_of(n: int) -> list[AuditEvent]:
    return [AuditEvent.record(f"test.event{i}", details={"i": i}) for i in range(n)]


def legacy_event(action: str, prev_hash: str, **details) -> AuditEvent:
    """An event as the unkeyed chain wrote it: a plain SHA-256."""
    event = AuditEvent(action=action, details=details, prev_hash=prev_hash)
    event.hash = chain.legacy_sha256(chain.row_canonical(event))
    event.save()
    return event


def take_anchor() -> anchor.Anchor:
    out = StringIO()
    call_command("audit_anchor", stdout=out, stderr=StringIO())
    return anchor.parse(out.getvalue())


# ------------------------------------------------------------ keyed chain


@pytest.mark.django_db
def test_an_edited_row_rehashed_with_plain_sha256_is_caught():
    events = chain_of(5)
    target = events[2]
    # The attacker edits a row with SQL and recomputes every later hash, as
    # the unkeyed chain allowed: the payload is known, the key is not.
    with with_table_rights(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET details = %s WHERE id = %s", [json.dumps({"i": 99}), target.pk])
        previous = events[1].hash
        for event in AuditEvent.objects.filter(pk__gte=target.pk).order_by("pk"):
            forged = chain.legacy_sha256(chain.row_canonical(event, previous))
            cursor.execute(f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE id = %s", [previous, forged, event.pk])
            previous = forged
    message = refused()
    assert f"Event {target.pk} " in message and "content altered or forged" in message
    assert "after 2 intact events" in message


@pytest.mark.django_db
def test_a_chain_sealed_with_another_key_is_caught(settings):
    chain_of(2)
    settings.AUDIT_KEY = "another key"
    message = refused()
    assert "after 0 intact events" in message
    assert "the key changed: it comes from AUDIT_KEY" in message


@pytest.mark.django_db
def test_a_row_inserted_with_raw_sql_and_a_forged_hash_is_caught():
    events = chain_of(3)
    forged = AuditEvent(action="host.added", actor_username="mallory", details={}, prev_hash=events[-1].hash)
    forged.hash = chain.legacy_sha256(chain.row_canonical(forged))
    with connection.cursor() as cursor:  # no trigger can refuse an INSERT
        cursor.execute(
            f"INSERT INTO {TABLE} (at, actor_username, action, object_type, object_id, object_repr, details, "
            "prev_hash, hash) VALUES (%s, %s, %s, '', '', '', %s, %s, %s)",
            [forged.at, "mallory", "host.added", "{}", forged.prev_hash, forged.hash],
        )
    pk = AuditEvent.objects.order_by("-pk").first().pk
    message = refused()
    assert f"Event {pk} (host.added" in message and "after 3 intact events" in message


# ------------------------------------------------------------ append-only


@pytest.mark.django_db
def test_the_orm_bulk_paths_are_refused():
    event = AuditEvent.record("test.event", details={"a": 1})
    with pytest.raises(AppendOnlyError, match="update"):
        AuditEvent.objects.filter(pk=event.pk).update(details={"a": 2})
    with pytest.raises(AppendOnlyError, match="bulk_update"):
        event.details = {"a": 2}
        AuditEvent.objects.bulk_update([event], ["details"])
    with pytest.raises(AppendOnlyError, match="bulk_create"):
        AuditEvent.objects.bulk_create([AuditEvent(action="test.forged")])
    with pytest.raises(AppendOnlyError, match="deleted"):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update_or_create(pk=event.pk, defaults={"action": "x"})
    assert list(AuditEvent.objects.values_list("action", "details")) == [("test.event", {"a": 1})]
    assert AuditEvent.record("test.still_works").prev_hash == event.hash


@pytest.mark.django_db
def test_raw_update_delete_are_refused_by_the_database():
    event = AuditEvent.record("test.event", details={"a": 1})
    statements = [
        (f"UPDATE {TABLE} SET details = %s WHERE id = %s", [json.dumps({"a": 2}), event.pk]),
        (f"UPDATE {TABLE} SET hash = hash WHERE id = %s", [event.pk]),
        (f"DELETE FROM {TABLE} WHERE id = %s", [event.pk]),
        (f"DELETE FROM {TABLE}", []),
    ]
    if connection.vendor == "postgresql":
        connection.check_constraints()  # TRUNCATE waits for no deferred check
        statements.append((f"TRUNCATE {TABLE}", []))
    for sql, params in statements:
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    assert AuditEvent.objects.get().details == {"a": 1}
    assert guard.problems(connection) == []
    assert verify().splitlines()[-1].startswith("1 events, chain intact")


@pytest.mark.django_db
def test_the_triggers_let_only_a_deleted_actor_through(users):
    event = AuditEvent.record("test.event", actor=users["operator"])
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        # Unsetting the actor hides nothing, but not together with a change.
        cursor.execute(f"UPDATE {TABLE} SET actor_id = NULL, actor_username = 'x' WHERE id = %s", [event.pk])
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET actor_id = %s WHERE id = %s", [users["auditor"].pk, event.pk])
    users["operator"].delete()  # on_delete=SET_NULL
    event = AuditEvent.objects.get(pk=event.pk)
    assert (event.actor_id, event.actor_username) == (None, "olivia")
    assert "chain intact" in verify().splitlines()[-1]


@pytest.mark.django_db
def test_verify_reports_missing_triggers():
    with with_table_rights():
        out = verify()
    assert "Warning: the audit table's triggers are" in out
    assert "manage.py migrate puts them back" in out
    assert "triggers" not in verify()


# ------------------------------------------------------------ anchors


@pytest.mark.django_db
def test_it_checks_the_newest_anchor(anchor_dir):
    chain_of(3)
    taken = take_anchor()
    assert (taken.count, taken.database) == (3, anchor.database_label())
    AuditEvent.record("test.later")  # events after the anchor are the chain's alone
    lines = verify("--require-anchor").splitlines()
    assert lines[-1] == f"4 events, chain intact; anchor of {taken.at} (3 events up to event {taken.head_id}) holds"
    assert any(line.startswith(f"Anchor: {anchor_dir}") for line in lines)


@pytest.mark.django_db
def test_a_deleted_tail_is_caught_by_the_anchor():
    events = chain_of(5)
    taken = take_anchor()
    with with_table_rights():
        AuditEvent._base_manager.filter(pk__gte=events[3].pk).delete()
    message = refused()
    assert "Audit chain broken" not in message, "what is left still chains"
    assert (
        f"The log ends at event {events[2].pk} but the anchor of {taken.at} saw 5 events up to event {events[4].pk}"
        in message
    )


@pytest.mark.django_db
def test_a_deleted_tail_followed_by_new_events_is_caught():
    events = chain_of(4)
    take_anchor()
    with with_table_rights():
        AuditEvent._base_manager.filter(pk=events[3].pk).delete()
    AuditEvent.record("test.after")  # chains to what is left
    message = refused()
    assert f"Event {events[3].pk}, the newest of the 4 events" in message and "no longer in the log" in message


@pytest.mark.django_db
def test_an_emptied_log_is_caught_by_the_anchor():
    chain_of(3)
    taken = take_anchor()
    with with_table_rights(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    message = refused()
    assert f"The log is empty but the anchor of {taken.at} saw 3 events" in message


@pytest.mark.django_db
def test_a_tampered_anchor_is_refused(anchor_dir, tmp_path):
    chain_of(2)
    take_anchor()
    path = anchor.newest_file()
    data = json.loads(path.read_text())
    data["count"] = 1
    path.write_text(json.dumps(data))
    assert "has a bad signature" in refused()
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({**data, "count": 2, "head_hash": "0" * 64}))
    assert "has a bad signature" in refused("--anchor", str(shipped))
    shipped.write_text("not json")
    assert "is not JSON" in refused("--anchor", str(shipped))


@pytest.mark.django_db
def test_an_anchor_signed_with_another_key_is_refused(settings, tmp_path):
    chain_of(1)
    shipped = tmp_path / "a.json"
    settings.AUDIT_KEY = "the old key"
    shipped.write_text(anchor.take().to_json())
    settings.AUDIT_KEY = ""
    assert "bad signature" in refused("--anchor", str(shipped))


@pytest.mark.django_db
def test_a_shipped_anchor_is_checked_from_a_file(tmp_path):
    chain_of(2)
    out = StringIO()
    call_command("audit_anchor", "--stdout", stdout=out, stderr=StringIO())
    assert anchor.newest_file() is None, "--stdout writes no file"
    shipped = tmp_path / "shipped.json"
    shipped.write_text(out.getvalue())
    head = AuditEvent.objects.order_by("-pk").first().pk
    lines = verify("--anchor", str(shipped)).splitlines()
    assert lines[-1].endswith(f"(2 events up to event {head}) holds")
    assert lines[-2].startswith(f"Anchor: {shipped}, taken ")


@pytest.mark.django_db
def test_without_an_anchor_it_warns_or_refuses(anchor_dir):
    chain_of(1)
    out = verify()
    assert f"Warning: no anchor of this database in {anchor_dir}" in out
    assert out.splitlines()[-1] == "1 events, chain intact; no anchor checked"
    assert "No anchor to check (--require-anchor)" in refused("--require-anchor")


@pytest.mark.django_db
def test_anchors_of_another_database_are_not_used(anchor_dir):
    chain_of(1)
    other = anchor.Anchor(**{**anchor.take().as_dict(), "database": "postgresql:elsewhere", "count": 9})
    anchor.write(other)
    assert anchor.newest_file() is None
    assert "(1 there are of other databases)" in verify()


def test_anchor_files_are_private_atomic_and_pruned(anchor_dir, db):
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for minute in range(5):
        anchor.write(anchor.take(start + timedelta(minutes=minute)), keep=3)
    files = anchor.anchor_files()
    assert [anchor.file_time(f) for f in files] == [start + timedelta(minutes=m) for m in (2, 3, 4)]
    assert stat.S_IMODE(os.stat(anchor_dir).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in files} == {0o600}
    assert sorted(p.name for p in anchor_dir.iterdir()) == sorted(f.name for f in files), "no temporary file left"
    assert anchor.load(files[-1]).count == 0


# ------------------------------------------------------------ the worker's anchor


@pytest.fixture
def quiet_maintenance(monkeypatch):
    monkeypatch.setattr(jobs, "reconcile", lambda: None)
    monkeypatch.setattr(jobs, "requeue_lost_jobs", lambda: [])
    monkeypatch.setattr(jobs.inventory, "refresh_all", lambda: None)


@pytest.mark.django_db
def test_maintenance_anchors_when_due_and_not_when_fresh(quiet_maintenance, settings):
    settings.AUDIT_ANCHOR_INTERVAL_S = 300
    chain_of(2)
    jobs.maintenance()
    assert len(anchor.anchor_files()) == 1
    AuditEvent.record("test.more")
    jobs.maintenance()
    files = anchor.anchor_files()
    assert len(files) == 1, "the newest anchor is fresh"
    old = files[0].with_name(f"anchor-{anchor.database_tag(anchor.database_label())}-20200101T000000000000Z.json")
    files[0].rename(old)
    jobs.maintenance()
    newest = anchor.load(anchor.newest_file())
    assert len(anchor.anchor_files()) == 2 and newest.count == 3


@pytest.mark.django_db
def test_maintenance_survives_an_unwritable_anchor_dir(quiet_maintenance, settings, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings.AUDIT_ANCHOR_DIR = blocker / "anchors"
    with caplog.at_level(logging.WARNING, logger="migrator.jobs"):
        jobs.maintenance()
    assert "Could not anchor the audit log" in caplog.text


@pytest.mark.django_db
def test_maintenance_anchors_even_when_a_step_fails(monkeypatch, quiet_maintenance):
    def broken():
        raise RuntimeError("libvirt away")

    monkeypatch.setattr(jobs.inventory, "refresh_all", broken)
    with pytest.raises(RuntimeError):
        jobs.maintenance()
    assert len(anchor.anchor_files()) == 1


# ------------------------------------------------------------ migration outcomes


def running(**fields):
    m = make_migration(**fields)
    assert m.claim(1, "worker")
    return m


def outcome(m) -> AuditEvent:
    return AuditEvent.objects.filter(object_type="migrator.migration", object_id=str(m.pk)).order_by("-pk").first()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reach, action, state",
    [
        (lambda m: m.finish({"time_elapsed": 2000, "downtime": 40}), "migration.succeeded", "succeeded"),
        (lambda m: m.fail("No route to host", vm_location="a"), "migration.failed", "failed"),
        (lambda m: m.mark_cancelled(vm_location="a", note="Aborted."), "migration.cancelled", "cancelled"),
        (lambda m: m.interrupt("link lost", "Resume post-copy later."), "migration.interrupted", "interrupted"),
        (lambda m: m.need_attention("b does not answer", "Checking."), "migration.needs_attention", "attention"),
    ],
)
def test_each_outcome_is_an_audit_event(reach, action, state):
    m = running()
    before = AuditEvent.objects.count()
    assert reach(m)
    assert AuditEvent.objects.count() == before + 1
    event = outcome(m)
    assert (event.action, event.actor, event.actor_username) == (action, None, "")
    assert event.details["state"] == state
    assert {event.details[k] for k in ("vm", "source", "destination", "requested_by")} == {"web", "a", "b", "olivia"}
    assert event.details["vm_location"] == m.vm_location
    if state == "succeeded":
        assert (event.details["downtime_ms"], event.details["vm_location"]) == (40, "b")
    if state in ("failed", "interrupted", "attention"):
        assert event.details["error"] == m.error_message
    assert "chain intact" in verify().splitlines()[-1]


@pytest.mark.django_db
def test_needing_attention_again_is_not_a_new_event():
    m = running()
    assert m.need_attention("b does not answer", "Checking.")
    assert m.need_attention("b still does not answer", "Checking again.")
    assert m.error_message == "b still does not answer"
    assert AuditEvent.objects.filter(action="migration.needs_attention").count() == 1
    assert m.fail("gave up", vm_location="a")
    assert AuditEvent.objects.filter(action="migration.failed").count() == 1


@pytest.mark.django_db
def test_a_cancel_is_audited_with_its_user(users):
    from migrator import actions

    who = actions.Requester(users["operator"], "browser", "192.0.2.4")
    queued = make_migration()
    assert actions.request_cancel(queued, who) == "Cancelled."
    event = outcome(queued)
    assert (event.action, event.actor, event.client_address) == ("migration.cancelled", users["operator"], "192.0.2.4")
    assert (event.details["via"], event.details["cancelled_by"]) == ("browser", "olivia")

    m = running(vm_uuid="22222222-2222-2222-2222-222222222222")
    actions.request_cancel(m, who)
    assert (outcome(m).action, outcome(m).actor) == ("migration.cancel_requested", users["operator"])
    m.mark_cancelled(vm_location="a", note="Aborted.")
    final = outcome(m)
    assert (final.action, final.actor, final.details["cancelled_by"]) == ("migration.cancelled", None, "olivia")
    assert not AuditEvent.objects.filter(action="migration.cancelled", object_id=str(m.pk), actor__isnull=False)


@pytest.mark.django_db
def test_a_settle_by_hand_is_one_audit_event(users):
    from migrator import actions

    m = running()
    m.need_attention("a does not answer", "Where the VM runs is not known.")
    actions.settle_by_hand(m, "failed", "a", "virsh list on a shows it running", actions.Requester(users["admin"]))
    events = AuditEvent.objects.filter(object_id=str(m.pk), action__startswith="migration.settle")
    assert [(e.action, e.actor_username) for e in events] == [("migration.settled_by_hand", "root-admin")]
    assert events[0].details["state"] == "failed" and events[0].details["reason"].startswith("virsh list")


@pytest.mark.django_db
def test_a_failed_audit_write_leaves_the_record_as_it_was(monkeypatch):
    m = running()

    def broken(*args, **kwargs):
        raise DatabaseError("audit table unavailable")

    monkeypatch.setattr(AuditEvent, "record", broken)
    with pytest.raises(DatabaseError):
        m.finish({"time_elapsed": 1000})
    assert m.state == MigrationState.RUNNING
    m.refresh_from_db()
    assert (m.state, m.finished_at) == (MigrationState.RUNNING, None)
    monkeypatch.undo()
    assert m.finish({"time_elapsed": 1000})


# ------------------------------------------------------------ re-keying


@pytest.mark.django_db
def test_rekeying_reseals_an_old_sha256_chain():
    prev = ""
    old = []
    for i in range(4):
        old.append(legacy_event(f"test.old{i}", prev, i=i))
        prev = old[-1].hash
    assert "Audit chain broken after 0 intact events" in refused(), "SHA-256 no longer verifies"
    with guard.suspended(connection):
        rekeyed = rechain(AuditEvent)
    assert rekeyed.details == {
        "events": 4,
        "old_head_id": old[-1].pk,
        "old_head_hash": old[-1].hash,
        "old_scheme": "sha256",
        "scheme": "hmac-sha256",
        "key_from": "SECRET_KEY",
        "pre_upgrade_chain": "intact",
        "pre_upgrade_broken_at": None,
    }
    assert verify().splitlines()[-1].startswith("5 events, chain intact")
    assert list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))[-1] == "audit.rekeyed"


@pytest.mark.django_db
def test_rekeying_does_not_hide_a_broken_old_chain():
    first = legacy_event("test.old0", "")
    second = legacy_event("test.old1", first.hash)
    legacy_event("test.old2", second.hash)
    tamper(second.pk, details={"edited": True})
    with guard.suspended(connection):
        rekeyed = rechain(AuditEvent)
    assert rekeyed.details["pre_upgrade_broken_at"] == second.pk
    assert rekeyed.details["pre_upgrade_chain"] == (
        f"broken at event {second.pk}: event {second.pk}'s content does not match its hash"
    )
    assert "chain intact" in verify().splitlines()[-1]


@pytest.mark.django_db
def test_rekeying_an_empty_log_records_nothing():
    assert rechain(AuditEvent) is None
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_rekeys_an_existing_database():
    """audit.0002 and 0003 on a database whose log predates them."""
    executor = MigrationExecutor(connection)
    executor.migrate([("audit", "0001_initial")])
    assert guard.problems(connection) == [f"missing: {', '.join(guard.triggers(connection))}"]
    prev = ""
    for i in range(3):
        prev = legacy_event(f"test.old{i}", prev, i=i).hash
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert guard.problems(connection) == []
    rekeyed = AuditEvent.objects.order_by("-pk").first()
    assert (rekeyed.action, rekeyed.details["events"], rekeyed.details["old_head_hash"]) == ("audit.rekeyed", 3, prev)
    assert verify().splitlines()[-1].startswith("4 events, chain intact")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
