"""Each policy's action on a real migration between the lab's hosts: the hot
guest (cache-hot, 256 MiB rewriting 32 MiB a second) under a low bandwidth
cap does not converge, so the policy's timeout decides where it ends."""

from __future__ import annotations

import time

import pytest

from hosts import gateway
from hosts.connection import connect_uri
from migrator.audit.models import AuditEvent
from migrator.models import Migration, MigrationState

from .test_migration_lab import queue_it, report, work

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

HOT = "cache-hot"
# 32 s per GiB of cache-hot's 256 MiB: a completion timeout of 8 s.
PER_GIB_FOR_8_S = 32


def run(queue, a, b, user, **overrides) -> tuple[Migration, float]:
    migration = queue_it(a, b, user, HOT, **overrides)
    started = time.monotonic()
    work(queue)
    migration.refresh_from_db()
    print(report(migration), f"(job {time.monotonic() - started:.1f} s)")
    return migration, time.monotonic() - started


def fired(migration: Migration) -> tuple[str, str]:
    applied = migration.applied_parameters
    return applied.get("timeout_fired"), applied.get("timeout_action_taken")


def timeline_says(migration: Migration, text: str) -> bool:
    return any(text in e.message for e in migration.events.filter(state="timeout"))


def audited(migration: Migration) -> dict:
    event = AuditEvent.objects.get(action="migration.timeout", object_id=str(migration.pk))
    return event.details


def runs_on(lab, host, migration: Migration, where: str) -> None:
    assert lab.where(HOT) == where, report(migration)
    assert gateway.vm_state(connect_uri(host), migration.vm_uuid) == "running"
    lab.wait_tick(HOT, where)


def test_postcopy_after_n_switches_at_n_and_the_vm_runs_on_b(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest(HOT)
    migration, took = run(
        queue,
        a,
        b,
        users["operator"],
        policy="postcopy-after",
        postcopy_after_s=5,
        bandwidth_mib_s=8,
        progress_timeout_s=None,
    )
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert fired(migration) == ("completion", "postcopy")
    assert migration.postcopy_started_at is not None
    assert timeline_says(
        migration, "The completion timeout fired (5 s had passed): the migration switched to post-copy"
    )
    assert audited(migration)["timeout_action"] == "postcopy"
    assert "switched to post-copy" in migration.outcome_note
    runs_on(lab, b, migration, "B")
    assert took < 60


def test_suspend_if_needed_suspends_at_the_completion_timeout_and_the_vm_runs_on_b(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest(HOT)
    migration, took = run(
        queue,
        a,
        b,
        users["operator"],
        policy="suspend-if-needed",
        completion_timeout_per_gib_s=PER_GIB_FOR_8_S,
        progress_timeout_s=None,
        bandwidth_mib_s=8,
    )
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert migration.parameters["auto_converge"] and migration.parameters["timeout_s"] == 8
    assert fired(migration) == ("completion", "suspend")
    assert timeline_says(migration, "The completion timeout fired (8 s had passed: 32 s per GiB")
    assert "the VM was suspended so the copy finishes" in migration.outcome_note
    runs_on(lab, b, migration, "B")
    assert took < 60


def test_minimal_downtime_aborts_at_the_per_gib_timeout_and_the_vm_stays_on_a(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest(HOT)
    migration, took = run(
        queue,
        a,
        b,
        users["operator"],
        policy="minimal-downtime",
        completion_timeout_per_gib_s=PER_GIB_FOR_8_S,
        progress_timeout_s=None,
        bandwidth_mib_s=8,
    )
    assert migration.state == MigrationState.FAILED, report(migration)
    assert fired(migration) == ("completion", "abort")
    assert migration.outcome_note.startswith("The completion timeout fired (8 s had passed: 32 s per GiB")
    assert "still running on lab-a" in migration.outcome_note
    assert audited(migration)["timeout"] == "completion"
    runs_on(lab, a, migration, "A")
    assert gateway.find_vm(connect_uri(b), name=HOT) is None, "nothing left on the destination"
    assert took < 60


def test_minimal_downtime_aborts_at_the_progress_timeout_and_the_vm_stays_on_a(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest(HOT)
    migration, took = run(
        queue,
        a,
        b,
        users["operator"],
        policy="minimal-downtime",
        # A completion timeout of 120 s only bounds the test: the progress timeout comes first.
        completion_timeout_per_gib_s=480,
        progress_timeout_s=6,
        bandwidth_mib_s=8,
    )
    assert migration.state == MigrationState.FAILED, report(migration)
    assert fired(migration) == ("progress", "abort")
    assert migration.outcome_note.startswith("The progress timeout fired (the remaining data had not fallen for 6 s)")
    assert timeline_says(migration, "The progress timeout fired")
    assert audited(migration)["timeout"] == "progress" and audited(migration)["result"] == "taken"
    runs_on(lab, a, migration, "A")
    assert took < 90
