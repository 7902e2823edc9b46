"""A copy-storage migration of db-local on the lab: what the live page is fed."""

import pytest

from migrator.live import migration_state
from migrator.models import MigrationState

from .test_migration_lab import migrate, report

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

MIB = 2**20


def test_it_records_the_disk_copy_from_the_first_to_the_final_sample(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("db-local")
    lab.wait_booted("db-local", "A")
    migration = migrate(queue, a, b, users["operator"], "db-local", disks=["vda"])
    samples = list(migration.samples.all())
    print(report(migration))
    for s in samples:
        print(
            f"{s.elapsed_ms:5d} ms  data {s.data_remaining_bytes / MIB:6.1f}/{s.data_total_bytes / MIB:6.1f} MiB left  "
            f"disk {s.disk_processed_bytes / MIB:5.1f}/{s.disk_total_bytes / MIB:5.1f} MiB "
            f"({s.disk_throughput_mib_s:.1f} MiB/s)  memory {s.throughput_mib_s:.1f} MiB/s"
        )
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert len(samples) >= 3, "a setup reading, a sized reading and the final one"

    first, last = samples[0], samples[-1]
    assert first.elapsed_ms < 200, "the first reading is taken as the job starts"
    sized = [s for s in samples if s.data_total_bytes]
    assert sized[0].elapsed_ms < last.elapsed_ms
    assert any(s.disk_total_bytes == 64 * MIB for s in samples[:-1]), "libvirt's own readings carry the disk copy"

    assert last.elapsed_ms == migration.total_time_ms
    assert (last.data_remaining_bytes, last.memory_remaining_bytes, last.disk_remaining_bytes) == (0, 0, 0)
    assert last.disk_processed_bytes == last.disk_total_bytes == 64 * MIB
    assert last.data_total_bytes == last.memory_total_bytes + 64 * MIB
    assert any(s.disk_throughput_mib_s > 0 for s in samples)

    assert migration.final_stats["disk_total"] == migration.final_stats["disk_processed"] == 64 * MIB
    assert migration_state(migration)["disk_copy_text"] == "64.0 MiB of 64.0 MiB"
