"""Disk copy on the live page: samples, final statistics, summary, sampling."""

import json
import re
import threading
import time
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from hosts import gateway
from migrator.consumers import MigrationConsumer
from migrator.live import migration_state
from migrator.models import MigrationSample, completed_stats, final_sample_stats

from .test_migration_model import make_migration

MIB = 2**20

# What libvirt 9.0 reported for db-local (256 MiB, 64 MiB qcow2 vda copied)
# in the lab: the source's readings count the disk, the destination's
# completed-job statistics do not.
SETUP = {"type": 2, "time_elapsed": 9, "data_total": 0, "data_processed": 0, "data_remaining": 0}
DISK_SIZED = {
    "type": 2,
    "time_elapsed": 381,
    "data_total": 64 * MIB,
    "data_processed": 0,
    "data_remaining": 64 * MIB,
    "disk_total": 64 * MIB,
    "disk_processed": 0,
    "disk_remaining": 64 * MIB,
}
LAST_LIVE = {
    "type": 2,
    "time_elapsed": 584,
    "memory_iteration": 2,
    "data_total": 335937536,
    "data_processed": 149443980,
    "data_remaining": 180224,
    "memory_total": 268828672,
    "memory_processed": 82335116,
    "memory_remaining": 180224,
    "memory_bps": 823352599,
    "disk_total": 64 * MIB,
    "disk_processed": 64 * MIB,
    "disk_remaining": 0,
}
COMPLETED_ON_DESTINATION = {
    "type": 3,
    "time_elapsed": 615,
    "downtime": 84,
    "memory_iteration": 3,
    "data_total": 268828672,
    "data_processed": 82515699,
    "data_remaining": 0,
    "memory_total": 268828672,
    "memory_processed": 82515699,
    "memory_remaining": 0,
    "memory_bps": 823352599,
    "disk_total": 0,
    "disk_processed": 0,
    "disk_remaining": 0,
}


def copy_storage_migration(parameters=None, **fields):
    return make_migration(storage_class="local", parameters={"disks": ["vda"], **(parameters or {})}, **fields)


@pytest.mark.django_db
def test_it_derives_disk_throughput_from_the_progress_between_readings():
    m = copy_storage_migration()
    m.claim(1, "h")
    first = m.progress(DISK_SIZED)
    assert first.disk_throughput_mib_s == 0
    later = m.progress(dict(DISK_SIZED, time_elapsed=881, disk_processed=32 * MIB, disk_remaining=32 * MIB))
    assert later.disk_throughput_mib_s == pytest.approx(64)
    assert later.as_dict()["disk_throughput_mib_s"] == pytest.approx(64)
    reported = m.progress(dict(DISK_SIZED, time_elapsed=1000, disk_processed=40 * MIB, disk_bps=10 * MIB))
    assert reported.disk_throughput_mib_s == pytest.approx(10), "libvirt's own disk rate wins"


@pytest.mark.django_db
def test_it_counts_memory_only_in_the_throughput():
    m = copy_storage_migration()
    m.claim(1, "h")
    row = m.progress(dict(LAST_LIVE, disk_bps=100 * MIB))
    assert row.throughput_mib_s == pytest.approx(823352599 / MIB)
    assert row.disk_throughput_mib_s == pytest.approx(100)


def test_it_keeps_the_sources_disk_figures_in_the_final_statistics():
    final = completed_stats(LAST_LIVE, COMPLETED_ON_DESTINATION)
    assert (final["disk_total"], final["disk_processed"], final["disk_remaining"]) == (64 * MIB, 64 * MIB, 0)
    assert final["time_elapsed"] == 615 and final["downtime"] == 84
    assert final["data_processed"] == 82515699, "the record's data sent stays what the destination reported"
    assert "type" not in final


def test_it_takes_a_mirror_caught_before_it_finished_as_copied_once_the_job_completed():
    live = dict(DISK_SIZED, disk_processed=10 * MIB, disk_remaining=54 * MIB)
    final = completed_stats(live, COMPLETED_ON_DESTINATION)
    assert (final["disk_processed"], final["disk_remaining"]) == (64 * MIB, 0)


def test_it_leaves_a_migration_without_disks_without_disk_figures():
    live = {k: v for k, v in LAST_LIVE.items() if not k.startswith("disk_")}
    final = completed_stats(live, {k: v for k, v in COMPLETED_ON_DESTINATION.items() if not k.startswith("disk_")})
    assert "disk_total" not in final
    assert final_sample_stats(final)["data_total"] == 268828672


@pytest.mark.django_db
def test_it_ends_the_chart_on_a_final_sample_where_nothing_remains():
    m = copy_storage_migration()
    m.claim(1, "h")
    m.progress(SETUP)
    m.progress(DISK_SIZED)
    final = completed_stats(LAST_LIVE, COMPLETED_ON_DESTINATION)
    row = m.progress(final_sample_stats(final))
    last = row.as_dict()
    assert last["elapsed_ms"] == 615
    assert (last["data_remaining_bytes"], last["memory_remaining_bytes"], last["disk_remaining_bytes"]) == (0, 0, 0)
    assert last["data_total_bytes"] == 268828672 + 64 * MIB, "the same shape as the source's readings"
    assert last["disk_processed_bytes"] == last["disk_total_bytes"] == 64 * MIB
    assert last["disk_throughput_mib_s"] == pytest.approx(64 / 0.234, rel=0.01)
    assert [s.elapsed_ms for s in m.samples.all()] == [9, 381, 615]
    assert m.samples.first().data_total_bytes == 0, "the setup reading is kept as the chart's start"


@pytest.mark.django_db
def test_it_says_how_much_disk_data_was_copied_in_the_state_and_the_first_paint(login):
    m = copy_storage_migration()
    m.claim(1, "h")
    m.progress(DISK_SIZED)
    m.refresh_from_db()
    state = migration_state(m)
    assert (state["disk_copied_bytes"], state["disk_total_bytes"]) == (0, 64 * MIB)
    assert state["disk_copy_text"] == "0.0 MiB of 64.0 MiB", "a running migration reads its last sample"
    m.progress(final_sample_stats(completed_stats(LAST_LIVE, COMPLETED_ON_DESTINATION)))
    m.finish(completed_stats(LAST_LIVE, COMPLETED_ON_DESTINATION), note="ok")
    state = migration_state(m)
    assert state["copies_disks"] is True
    assert state["disk_copy_text"] == "64.0 MiB of 64.0 MiB"
    assert state["data_text"] == "78.7 MiB / 256.0 MiB"

    page = login("auditor").get(reverse("migrator:detail", args=[m.pk])).content.decode()
    assert re.search(r'data-field="disk_copy">64\.0 MiB of 64\.0 MiB<', page)
    assert re.search(r'data-field="data">78\.7 MiB / 256\.0 MiB<', page)
    assert 'id="stat-disk-throughput"' in page and "Disks copied" in page
    embedded = json.loads(
        re.search(r'<script id="migration-data" type="application/json">(.*?)</script>', page).group(1)
    )
    assert embedded == json.loads(json.dumps(state, default=str))
    samples = json.loads(re.search(r'<script id="samples-data" type="application/json">(.*?)</script>', page).group(1))
    assert samples == [s.as_dict() for s in m.samples.all()]
    assert samples[-1]["disk_remaining_bytes"] == 0 and "disk_throughput_mib_s" in samples[-1]


@pytest.mark.django_db
def test_it_shows_no_disk_parts_for_a_migration_without_disks(login):
    m = make_migration()
    m.claim(1, "h")
    m.finish({"time_elapsed": 900, "downtime": 80, "data_processed": 80 * MIB}, note="ok")
    state = migration_state(m)
    assert state["copies_disks"] is False and state["disk_copy_text"] == "" and state["disk_total_bytes"] is None
    page = login("auditor").get(reverse("migrator:detail", args=[m.pk])).content.decode()
    assert "Disks copied" not in page and "stat-disk-throughput" not in page
    assert re.search(r'data-field="data">80\.0 MiB / 256\.0 MiB<', page)


@pytest.mark.django_db
def test_it_says_the_disk_copy_is_not_sized_yet_before_libvirt_sized_it():
    m = copy_storage_migration()
    m.claim(1, "h")
    m.progress(SETUP)
    m.refresh_from_db()
    assert m.disk_copy is None and migration_state(m)["disk_copy_text"] == "—"


@pytest.mark.django_db(transaction=True)
async def test_it_replays_disk_figures_in_the_same_shape_as_the_page(users):
    m = await sync_to_async(copy_storage_migration)()
    await sync_to_async(m.claim)(1, "h")
    for stats in (SETUP, DISK_SIZED, LAST_LIVE):
        await sync_to_async(m.progress)(stats)
    comm = WebsocketCommunicator(MigrationConsumer.as_asgi(), f"/ws/migrations/{m.pk}/")
    comm.scope["user"] = users["auditor"]
    comm.scope["url_route"] = {"kwargs": {"pk": m.pk}}
    connected, _ = await comm.connect()
    assert connected
    history = await comm.receive_json_from(timeout=5)
    rows = await sync_to_async(lambda: [s.as_dict() for s in MigrationSample.objects.filter(migration=m)])()
    assert history["samples"] == rows
    assert [s["disk_total_bytes"] for s in history["samples"]] == [0, 64 * MIB, 64 * MIB]
    assert history["migration"]["disk_copy_text"] == "64.0 MiB of 64.0 MiB"
    await comm.disconnect()


class FakeDomain:
    """jobStats() as libvirt answers it: no job yet, setup zeros, then sizes."""

    def __init__(self, readings, done: threading.Event):
        self.readings = list(readings)
        self.done = done
        self.calls: list[float] = []

    def jobStats(self, flags):  # noqa: N802 - libvirt's name
        self.calls.append(time.monotonic())
        if len(self.readings) == 1:
            self.done.set()
        return self.readings.pop(0) if self.readings else {"type": gateway.JobType.NONE}


def test_it_samples_fast_until_libvirt_sized_the_job_and_records_one_setup_reading(monkeypatch):
    no_job = {"type": gateway.JobType.NONE}
    recorded = []
    spec = SimpleNamespace(
        timeout_s=None,
        timeout_action="",
        progress_timeout_s=None,
        max_downtime_ms=None,
        allows_postcopy=False,
        postcopy_resume=False,
    )
    run = gateway.MigrationRun("qemu:///fake", "uuid", spec, on_sample=recorded.append, sample_interval_s=0.5)
    dom = FakeDomain(
        [no_job, SETUP, dict(SETUP, time_elapsed=60), dict(SETUP, time_elapsed=110), DISK_SIZED], run._done
    )
    conn = SimpleNamespace(lookupByUUIDString=lambda uuid: dom, close=lambda: None)
    monkeypatch.setattr("hosts.gateway.migration.open_connection", lambda uri: conn)
    started = time.monotonic()
    run._watch()
    assert [s["time_elapsed"] for s in recorded] == [9, 381]
    assert dom.calls[-1] - started < 0.45, "the first sized reading came before a whole sampling interval"
    assert run.last_stats is recorded[-1]


def _hot(elapsed_ms: int, remaining: int, dirty_pages: int) -> dict:
    return {
        "time_elapsed": elapsed_ms,
        "memory_iteration": 3,
        "data_total": 256 * MIB,
        "data_remaining": remaining,
        "memory_bps": 8 * MIB,
        "memory_dirty_rate": dirty_pages,
        "memory_page_size": 4096,
    }


@pytest.mark.django_db
def test_the_server_says_when_pre_copy_is_not_converging():
    from migrator.live import convergence_warning, migration_state

    migration = copy_storage_migration()
    migration.claim(1, "worker")
    for i in range(6):  # the guest dirties 16 MiB/s while 8 MiB/s is sent, for 5 s
        migration.progress(_hot(10_000 + 1000 * i, 100 * MIB, 4096))
    warning = convergence_warning(migration)
    assert warning.startswith("Not converging. The guest dirties memory at 16.0 MiB/s while 8.0 MiB/s is sent")
    assert migration_state(migration)["convergence_warning"] == warning


@pytest.mark.django_db
def test_the_server_says_nothing_while_pre_copy_converges():
    from migrator.live import convergence_warning

    migration = copy_storage_migration()
    migration.claim(1, "worker")
    for i in range(6):
        migration.progress(_hot(10_000 + 1000 * i, (100 - 15 * i) * MIB, 256))
    assert convergence_warning(migration) == ""
    migration.progress(_hot(16_000, 0, 256))
    migration.finish({"time_elapsed": 16_000})
    assert convergence_warning(migration) == ""


@pytest.mark.django_db
def test_the_not_converging_warning_comes_with_the_action_the_planner_recommends():
    from migrator.live import convergence_advice

    migration = copy_storage_migration()
    migration.claim(1, "worker")
    for i in range(6):  # 16 MiB/s dirtied, 8 MiB/s sent: no cap to raise, post-copy not allowed
        migration.progress(_hot(10_000 + 1000 * i, 100 * MIB, 4096))
    advice = convergence_advice(migration)
    assert advice["kind"] in ("max_downtime", "force_complete"), advice
    assert advice["label"] and advice["why"]

    allowed = copy_storage_migration(
        vm_uuid="22222222-2222-2222-2222-222222222222", parameters={"allow_postcopy": True}
    )
    allowed.claim(1, "worker")
    for i in range(6):
        allowed.progress(_hot(10_000 + 1000 * i, 100 * MIB, 4096))
    assert convergence_advice(allowed)["kind"] in ("postcopy", "max_downtime")
    allowed.finish({"time_elapsed": 16_000})
    assert convergence_advice(allowed) is None
