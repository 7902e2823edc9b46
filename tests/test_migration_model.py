import pytest
from django.db import IntegrityError, transaction

from migrator.audit.models import AuditEvent
from migrator.models import Migration, MigrationSample, MigrationState


def make_migration(**fields) -> Migration:
    values = {
        "vm_uuid": "11111111-1111-1111-1111-111111111111",
        "vm_name": "web",
        "vm_memory_kib": 262144,
        "source_name": "a",
        "source_uri": "qemu:///a",
        "destination_name": "b",
        "destination_uri": "qemu:///b",
        "storage_class": "shared",
        "started_by_username": "olivia",
    }
    values.update(fields)
    return Migration.objects.create(**values)


@pytest.mark.django_db
def test_it_allows_one_active_migration_per_vm():
    first = make_migration()
    with pytest.raises(IntegrityError), transaction.atomic():
        make_migration()
    first.request_cancel(None)
    assert make_migration().state == MigrationState.QUEUED


@pytest.mark.django_db
def test_it_claims_a_queued_migration_once():
    m = make_migration()
    assert m.claim(123, "here")
    assert m.state == MigrationState.RUNNING and m.worker_pid == 123 and m.started_at
    assert not Migration.objects.get(pk=m.pk).claim(456, "there")


@pytest.mark.django_db
def test_it_cancels_queued_at_once_and_running_through_the_job():
    queued = make_migration()
    assert queued.request_cancel(None)
    assert queued.state == MigrationState.CANCELLED and queued.finished_at
    running = make_migration()
    running.claim(1, "h")
    assert running.request_cancel(None)
    assert running.state == MigrationState.CANCELLING
    assert running.mark_cancelled(vm_location="a", note="aborted")
    assert running.state == MigrationState.CANCELLED and running.vm_location == "a"
    assert not running.request_cancel(None)


@pytest.mark.django_db
def test_it_records_final_statistics_on_success():
    m = make_migration()
    m.claim(1, "h")
    stats = {"time_elapsed": 2000, "downtime": 80, "data_processed": 200 * 2**20, "memory_iteration": 3}
    assert m.finish(stats, note="ok")
    assert (m.total_time_ms, m.downtime_ms, m.iterations) == (2000, 80, 3)
    assert m.avg_throughput_mib_s == pytest.approx(100)
    assert m.vm_location == "b"
    assert not m.fail("late error", vm_location="a"), "a finished record does not change again"
    assert [e.state for e in m.events.all()] == ["running", "succeeded"]


@pytest.mark.django_db
def test_it_records_libvirts_error_on_failure():
    from hosts.gateway import GatewayError

    m = make_migration()
    m.claim(1, "h")
    m.fail(GatewayError("operation failed: migration out", code=9, domain=10), vm_location="a", note="VM on a")
    assert m.state == MigrationState.FAILED
    assert (m.error_code, m.error_domain, m.error_message) == (9, 10, "operation failed: migration out")
    assert m.outcome_note == "VM on a"


@pytest.mark.django_db
def test_it_turns_job_stats_into_a_sample():
    m = make_migration()
    sample = MigrationSample.from_stats(
        m,
        {
            "time_elapsed": 1500,
            "memory_iteration": 2,
            "data_total": 300,
            "data_processed": 100,
            "data_remaining": 200,
            "memory_bps": 2**20 * 50,
            "memory_dirty_rate": 2560,
            "memory_page_size": 4096,
            "downtime": 120,
            "auto_converge_throttle": 30,
        },
    )
    assert sample.throughput_mib_s == pytest.approx(50)
    assert sample.dirty_rate_mib_s == pytest.approx(10)
    assert sample.as_dict()["throttle_pct"] == 30


@pytest.mark.django_db
def test_it_chains_audit_events():
    first = AuditEvent.record("host.added", details={"uri": "x"})
    second = AuditEvent.record("host.removed", details={"uri": "x"})
    assert second.prev_hash == first.hash
    assert second.hash == second.compute_hash()
