"""The queue on the lab, with real workers: two `manage.py worker` commands
(two processes each) share the database and Redis, as workers on two
machines would. Lab-a may send three migrations at once; a fourth waits,
starts by itself when a slot frees, first-come; a waiting one is cancelled;
a scheduled one starts at its time."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from hosts import inventory
from hosts.lab import DiskSpec
from hosts.models import Host, VirtualMachine
from migrator import actions, jobs
from migrator.fleet import batches
from migrator.models import Batch, BatchState, Migration, MigrationState
from migrator.planning.evacuation import plan_evacuation
from tests.worker_fixtures import GUESTS, quiet_lab

pytestmark = [pytest.mark.lab, pytest.mark.database, pytest.mark.django_db(transaction=True)]

# Small guests at a low cap: each migration lasts several seconds, so the
# fourth must wait for one of the first three.
CAP_MIB_S = 8


def vm_on(host: Host, name: str) -> VirtualMachine:
    inventory.refresh_host(host)
    return host.vms.get(name=name)


def ask(vm: VirtualMachine, destination: Host, user, **more) -> Migration:
    return jobs.queue_migration(
        vm=vm, destination=destination, parameters={"bandwidth_mib_s": CAP_MIB_S}, report=[], user=user, **more
    )


def watch(records: list[Migration], timeout_s: float) -> list[dict[str, str]]:
    """The records' states every 0.2 s until none is in flight."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = {m.vm_name: m.state for m in Migration.objects.filter(pk__in=[r.pk for r in records])}
        seen.append(states)
        if not any(s in ("waiting", "queued", "running", "cancelling") for s in states.values()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"still in flight after {timeout_s} s: {seen[-1]}")


def test_a_fourth_migration_waits_for_a_slot_and_starts_by_itself(
    lab,
    lab_hosts,
    small_guests,
    real_workers,
    users,
):
    a, b, c = (Host.objects.get(name=n) for n in ("lab-a", "lab-b", "lab-c"))
    a.max_outgoing = 3
    a.save()
    small_guests(5)
    real_workers(processes=2)
    real_workers(processes=2)
    operator = users["operator"]

    destinations = (b, b, c, c)
    records = [ask(vm_on(a, name), dest, operator) for name, dest in zip(GUESTS, destinations, strict=False)]
    fifth = ask(vm_on(a, GUESTS[4]), c, operator)
    assert fifth.state == MigrationState.WAITING
    assert actions.request_cancel(fifth, actions.Requester(operator)) == "Cancelled."
    fifth.refresh_from_db()
    assert fifth.state == MigrationState.CANCELLED and fifth.vm_location == "lab-a"

    seen = watch(records, timeout_s=420)

    # Never more than three running out of lab-a, nor two into one host, across both workers.
    for states in seen:
        busy = [name for name, s in states.items() if s in ("queued", "running", "cancelling")]
        assert len(busy) <= 3, states
        assert sum(1 for n, d in zip(GUESTS, destinations, strict=False) if n in busy and d == c) <= 2, states
    # The fourth waited while the first three ran, then started by itself.
    assert any(s[GUESTS[3]] == "waiting" and sum(v == "running" for v in s.values()) == 3 for s in seen)
    for m in records:
        m.refresh_from_db()
        assert m.state == MigrationState.SUCCEEDED, (m.vm_name, m.error_message)
    assert records[3].events.filter(state="queued").exists()
    assert records[3].started_at >= min(m.finished_at for m in records[:3])
    # First come, first served: they were handed out in the order asked.
    queued_at = [m.events.get(state="queued").at for m in records]
    assert queued_at == sorted(queued_at)
    for name, dest in zip(GUESTS, destinations, strict=False):
        assert lab.where(name) == dest.name[-1].upper()
        assert lab.counter_advanced(name, dest.name[-1].upper())


def test_an_evacuation_empties_lab_a_onto_b_and_c_and_reports_what_stays(
    lab, lab_hosts, small_guests, real_workers, users
):
    quiet_lab(lab)
    names = small_guests(4)
    # A shareable disk on lab-a's own storage: no other host can reach it, so this VM cannot move.
    lab.define_guest("pinned", 128, dirty_mb=0, disks=[DiskSpec("vdb", size_mib=16, format="raw", shareable=True)])
    lab.reset_guest("pinned")
    try:
        a = Host.objects.get(name="lab-a")
        inventory.refresh_host(a)
        real_workers(processes=3)
        operator = actions.Requester(users["operator"], "browser")

        plan = plan_evacuation(a, policy="minimal-downtime")
        assert sorted(s.vm_name for s in plan.steps) == sorted(names)
        assert {s.destination_name for s in plan.steps} == {"lab-b", "lab-c"}
        pinned = next(u for u in plan.unmovable if u.vm_name == "pinned")
        assert pinned.reasons and not pinned.skipped

        batch = batches.start(a, plan, operator)
        a.refresh_from_db()
        assert a.in_maintenance
        deadline = time.monotonic() + 300
        while Batch.objects.get(pk=batch.pk).state == BatchState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.5)
        batch.refresh_from_db()
        assert batch.state == BatchState.FINISHED
        report = batches.report(batch)
        assert report.succeeded == 4, [(r.vm_name, r.state, r.note) for r in report.rows]
        assert report.left_on_source == ["pinned"]
        for row in report.rows:
            key = row.destination[-1].upper()
            assert lab.where(row.vm_name) == key
            assert lab.counter_advanced(row.vm_name, key)  # still running, on its new host
        assert lab.where("pinned") == "A" and lab.counter_advanced("pinned", "A")
        assert batches.leave_maintenance(a, operator)
    finally:
        lab.remove_guest("pinned")


def test_a_scheduled_migration_starts_at_its_time(lab, lab_hosts, small_guests, real_workers, users):
    a, b = Host.objects.get(name="lab-a"), Host.objects.get(name="lab-b")
    small_guests(1)
    real_workers(processes=2)
    at = timezone.now() + timedelta(seconds=8)
    m = ask(vm_on(a, GUESTS[0]), b, users["operator"], not_before=at)
    assert m.state == MigrationState.WAITING
    assert m.wait_reason.startswith("Scheduled to start at ")
    time.sleep(4)
    m.refresh_from_db()
    assert m.state == MigrationState.WAITING
    watch([m], timeout_s=120)
    m.refresh_from_db()
    assert m.state == MigrationState.SUCCEEDED, m.error_message
    assert m.started_at >= at
    assert (m.started_at - at).total_seconds() < 10  # RQ's scheduler, not the minutely maintenance pass
