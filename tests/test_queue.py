"""The migration queue: limits per source, per destination and per site,
first-come order, reasons and positions, scheduled starts, maintenance, and
cancelling a waiting migration. Slots are decided in the database
(migrator.fleet.slots), so concurrent dispatchers are tested with threads on
separate connections."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from hosts.models import Host
from migrator import jobs
from migrator.audit.models import AuditEvent
from migrator.fleet import slots
from migrator.models import Migration, MigrationState

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch):
    """Promoted migrations would get RQ jobs; here only the slots matter."""
    monkeypatch.setattr(jobs, "enqueue_migration", lambda pk: None)


@pytest.fixture
def hosts():
    return {name: Host.objects.create(name=name, uri="test:///default") for name in ("a", "b", "c")}


def waiting(source="a", destination="b", **fields) -> Migration:
    values = {
        "state": MigrationState.WAITING,
        "vm_uuid": str(uuid.uuid4()),
        "vm_name": f"vm-{Migration.objects.count() + 1}",
        "vm_memory_kib": 262144,
        "source_name": source,
        "source_uri": "test:///default",
        "destination_name": destination,
        "destination_uri": "test:///default",
        "storage_class": "shared",
        "started_by_username": "olivia",
    }
    values.update(fields)
    return Migration.objects.create(**values)


def states(*records: Migration) -> list[str]:
    for m in records:
        m.refresh_from_db()
    return [m.state for m in records]


def test_limits_default_to_the_settings_and_a_host_overrides_them(hosts, settings):
    settings.MIGRATION_MAX_OUTGOING, settings.MIGRATION_MAX_INCOMING = 2, 2
    hosts["a"].max_outgoing = 4
    hosts["a"].save()
    limits = slots.Limits.now()
    assert (limits.out_of("a"), limits.into("a"), limits.out_of("b")) == (4, 2, 2)
    assert limits.out_of("a host that is gone") == 2


def test_a_third_migration_from_one_source_waits_and_says_why(hosts, settings):
    settings.MIGRATION_MAX_OUTGOING = 2
    first, second, third = waiting(), waiting(destination="c"), waiting(destination="c")
    promoted = slots.promote_waiting()
    assert [m.pk for m in promoted] == [first.pk, second.pk]
    assert states(first, second, third) == ["queued", "queued", "waiting"]
    assert third.wait_reason == "a already sends 2 (limit 2)."
    assert slots.position_of(third) == 1


def test_the_incoming_and_site_limits_hold(hosts, settings):
    settings.MIGRATION_MAX_INCOMING = 1
    into_b = [waiting(source="a"), waiting(source="c")]
    slots.promote_waiting()
    assert states(*into_b) == ["queued", "waiting"]
    assert into_b[1].wait_reason == "b already receives 1 (limit 1)."

    settings.MIGRATION_MAX_INCOMING, settings.MIGRATION_MAX_TOTAL = 5, 2
    third = waiting(source="b", destination="c")
    slots.promote_waiting()
    assert states(into_b[1], third) == ["queued", "waiting"]
    assert third.wait_reason == "The site already runs 2 migrations (limit 2)."


def test_a_freed_slot_goes_to_the_first_come(hosts, settings):
    settings.MIGRATION_MAX_OUTGOING = 1
    running = waiting()
    slots.promote_waiting()
    later = [waiting(destination="c"), waiting(destination="b"), waiting(destination="c")]
    slots.promote_waiting()
    assert [slots.position_of(m) for m in later] == [1, 2, 3]

    running.refresh_from_db()
    running.claim()
    running.finish({})  # the state change dispatches by itself after commit
    slots.promote_waiting()
    assert states(*later) == ["queued", "waiting", "waiting"]
    assert [slots.position_of(m) for m in later] == [None, 1, 2]


def test_an_earlier_waiting_migration_keeps_its_slots_from_later_ones(hosts, settings):
    settings.MIGRATION_MAX_OUTGOING, settings.MIGRATION_MAX_INCOMING = 2, 1
    slots.promote_waiting()
    busy_b = waiting(source="c", destination="b")
    slots.promote_waiting()
    blocked = waiting(source="a", destination="b")  # waits for b's one incoming slot
    behind = waiting(source="a", destination="c")  # would take a's second slot: a's first is kept for `blocked`
    free = waiting(source="b", destination="a")  # needs neither a's outgoing nor b's incoming
    slots.promote_waiting()
    assert states(busy_b, blocked, behind, free) == ["queued", "waiting", "queued", "queued"]
    # a sends 1 of 2: `behind` took the slot that was free beside the one kept for `blocked`.
    settings.MIGRATION_MAX_OUTGOING = 1
    after = waiting(source="a", destination="c")
    slots.promote_waiting()
    assert states(after) == ["waiting"]
    assert "earlier waiting migration(s) go first" in after.wait_reason or "already sends" in after.wait_reason


def test_a_scheduled_migration_waits_for_its_time(hosts):
    at = timezone.now() + timedelta(minutes=30)
    scheduled = waiting(not_before=at)
    slots.promote_waiting()
    assert states(scheduled) == ["waiting"]
    assert scheduled.wait_reason.startswith("Scheduled to start at ")
    slots.promote_waiting(now=at + timedelta(seconds=1))
    assert states(scheduled) == ["queued"]


def test_no_migration_starts_towards_a_host_in_maintenance(hosts):
    hosts["b"].in_maintenance = True
    hosts["b"].save()
    m = waiting()
    slots.promote_waiting()
    assert states(m) == ["waiting"]
    assert m.wait_reason == "b is in maintenance: it starts when the host leaves maintenance."


def test_a_waiting_migration_is_cancelled_at_once_and_audited(hosts, users):
    m = waiting()
    assert m.can_cancel
    assert m.request_cancel(users["operator"], via="browser")
    assert m.state == MigrationState.CANCELLED
    assert m.vm_location == "a"
    assert AuditEvent.objects.filter(action="migration.cancelled", object_id=str(m.pk)).exists()


def test_queue_migration_waits_then_starts_once_committed(hosts, test_host, users, django_capture_on_commit_callbacks):
    vm = test_host.vms.first()
    with django_capture_on_commit_callbacks(execute=True):
        m = jobs.queue_migration(vm=vm, destination=hosts["b"], parameters={}, report=[], user=users["operator"])
    m.refresh_from_db()
    assert m.state == MigrationState.QUEUED
    assert [e.state for e in m.events.all()][:2] == ["waiting", "queued"]


def test_occupancy_counts_what_each_host_sends_and_receives(hosts, settings):
    settings.MIGRATION_MAX_OUTGOING = 2
    waiting(), waiting(destination="c")
    slots.promote_waiting()
    table = slots.occupancy()
    assert table["a"]["sending"] == 2 and table["a"]["max_outgoing"] == 2
    assert table["b"]["receiving"] == 1 and table["c"]["receiving"] == 1


@pytest.mark.django_db(transaction=True)
def test_racing_dispatchers_never_exceed_a_limit(settings):
    """Eight threads, each on its own database connection, dispatch at once:
    the lock row makes their decisions one after another."""
    settings.MIGRATION_MAX_OUTGOING, settings.MIGRATION_MAX_TOTAL = 2, 5
    for name in ("a", "b", "c"):
        Host.objects.create(name=name, uri="test:///default")
    for i in range(12):
        waiting(destination="bc"[i % 2])
    errors = []
    start = threading.Barrier(8)

    def race():
        try:
            start.wait()
            slots.promote_waiting()
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert Migration.objects.filter(state=MigrationState.QUEUED).count() == 2


def test_the_home_page_shows_the_queue_and_the_detail_page_why_it_waits(hosts, settings, login):
    settings.MIGRATION_MAX_OUTGOING = 1
    waiting()
    second = waiting(destination="c")
    slots.promote_waiting()
    client = login("operator")
    page = client.get("/").content.decode()
    assert 'id="migration-queue"' in page
    assert "a already sends 1 (limit 1)." in page
    assert f'action="/migrations/{second.pk}/cancel/"' in page
    assert "a sends 1/1" in page
    detail = client.get(second.get_absolute_url()).content.decode()
    assert "number 1 in the queue" in detail
    assert "a already sends 1 (limit 1)." in detail
