"""Real migrations between the lab's two libvirt hosts, through the same
form, queue, RQ job and record as the browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection
from django.urls import reverse
from django.utils import timezone
from rq import SimpleWorker

from hosts import gateway, inventory
from hosts.connection import connect_uri
from migrator.executor import reconcile
from migrator.forms import MigrationForm
from migrator.jobs import queue_migration
from migrator.models import Migration, MigrationState

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def work(queue) -> None:
    """Run queued jobs in this process (a forking worker would not see the test database)."""
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def form_for(a, b, vm_name: str, **overrides) -> MigrationForm:
    """The wizard's form as a browser submits it, with `overrides`."""
    inventory.refresh_host(a)
    vm = a.vms.get(name=vm_name)
    features = gateway.migration_features(connect_uri(a), vm.uuid)
    return MigrationForm(MigrationForm.defaults(vm, b, **overrides), vm=vm, features=features)


def queue_it(a, b, user, vm_name: str, **overrides) -> Migration:
    form = form_for(a, b, vm_name, **overrides)
    assert form.is_valid(), form.errors
    return queue_migration(vm=form.vm, destination=b, parameters=form.parameters(), report=form.report, user=user)


def migrate(queue, a, b, user, vm_name: str, **overrides) -> Migration:
    migration = queue_it(a, b, user, vm_name, **overrides)
    work(queue)
    migration.refresh_from_db()
    return migration


def cancel_after(migration: Migration, user, seconds: float) -> threading.Thread:
    """Request a cancel from another thread while this one runs the job."""

    def cancel() -> None:
        time.sleep(seconds)
        Migration.objects.get(pk=migration.pk).request_cancel(user)
        connection.close()

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


def report(migration: Migration) -> str:
    return (
        f"#{migration.pk} {migration.vm_name} {migration.state}: total {migration.total_time_ms} ms, "
        f"downtime {migration.downtime_ms} ms, iterations {migration.iterations}; {migration.error_message} "
        f"{migration.outcome_note}"
    )


def test_it_migrates_a_shared_storage_vm_and_it_keeps_running_on_b(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("web-shared")
    migration = migrate(queue, a, b, users["operator"], "web-shared")
    print(report(migration))
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert lab.where("web-shared") == "B"
    lab.wait_tick("web-shared", "B")
    assert migration.total_time_ms and migration.downtime_ms is not None and migration.iterations
    assert migration.samples.exists(), "job statistics were sampled"
    assert migration.vm_location == "lab-b"
    assert b.vms.filter(name="web-shared", state="running").exists()
    assert not a.vms.filter(name="web-shared").exists()


def _qemu_io(path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True)


def test_it_copies_local_disks_into_images_it_creates(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("db-local")
    inventory.refresh_host(a)
    vm = a.vms.get(name="db-local")
    vda = next(d for d in vm.disks if d["target"] == "vda")["source"]
    # Write a pattern on the source disk while the guest is off, then boot it again.
    lab.stop_guest("db-local")
    written = _qemu_io(lab.host_path("A", vda), "write -P 0x5a 1M 1M")
    assert written.returncode == 0, written.stderr
    gateway.vm_lifecycle(connect_uri(a), vm.uuid, "start")
    lab.wait_booted("db-local", "A")

    migration = migrate(queue, a, b, users["operator"], "db-local", disks=["vda"])
    print(report(migration))
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert any("Created" in e.message for e in migration.events.all())
    lab.wait_tick("db-local", "B")
    lab.stop_guest("db-local")
    read = _qemu_io(lab.host_path("B", vda), "read -P 0x5a 1M 1M")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout


def test_it_refuses_read_only_and_shareable_disks(lab, lab_hosts):
    a, b = lab_hosts
    form = form_for(a, b, "db-local", disks=["vda", "vdb", "vdc"])
    assert not form.is_valid()
    errors = form.errors["disks"]
    assert any(e.startswith("vdb cannot be copied: it is read-only") for e in errors), errors
    assert any(e.startswith("vdc cannot be copied: it is shareable") for e in errors), errors
    assert not any("vda" in e for e in errors), errors
    # All three are listed; the two that cannot be copied are greyed out.
    assert [choice for choice, _ in form.fields["disks"].choices] == ["vda", "vdb", "vdc"]
    assert form.fields["disks"].widget.disabled_values == {"vdb", "vdc"}


def test_it_refuses_a_vm_that_is_not_running(lab, lab_hosts):
    a, b = lab_hosts
    lab.stop_guest("idle")
    form = form_for(a, b, "idle")
    assert not form.is_valid()
    assert "only running VMs" in " ".join(form.non_field_errors())


def test_it_cancels_a_slow_migration_and_the_vm_stays_on_a(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("web-shared")
    migration = queue_it(a, b, users["operator"], "web-shared", bandwidth_mib_s=2)

    cancel_after(migration, users["operator"], 4)
    work(queue)
    migration.refresh_from_db()
    print(report(migration))
    assert migration.state == MigrationState.CANCELLED, report(migration)
    assert migration.cancelled_by_username == users["operator"].username
    assert lab.where("web-shared") == "A"
    lab.wait_tick("web-shared", "A")
    assert gateway.find_vm(connect_uri(b), name="web-shared") is None, "nothing left on the destination"
    assert "still running on lab-a" in migration.outcome_note


def test_it_finishes_a_non_converging_vm_by_suspending_it_at_the_timeout(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("cache-hot")
    migration = migrate(
        queue, a, b, users["operator"], "cache-hot", bandwidth_mib_s=8, timeout_s=8, timeout_action="suspend"
    )
    print(report(migration))
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert migration.applied_parameters["timeout_action_taken"] == "suspend"
    assert "suspended" in migration.outcome_note
    assert lab.where("cache-hot") == "B"
    assert gateway.vm_state(connect_uri(b), migration.vm_uuid) == "running"


def test_it_converges_a_hot_vm_with_auto_converge(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("cache-hot")
    migration = migrate(queue, a, b, users["operator"], "cache-hot", bandwidth_mib_s=16, auto_converge="on")
    print(report(migration))
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    throttles = [s.throttle_pct for s in migration.samples.all() if s.throttle_pct]
    assert throttles and max(throttles) >= 20, "auto-converge throttled the guest"


def test_it_starts_one_migration_on_a_double_submit(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("idle")
    first = queue_it(a, b, users["operator"], "idle")
    form = form_for(a, b, "idle")
    # The form already refuses (R2); the database refuses even if two forms race.
    assert not form.is_valid() and "already being migrated" in " ".join(form.non_field_errors())
    with pytest.raises(IntegrityError):
        queue_migration(vm=form.vm, destination=b, parameters={}, report=None, user=users["operator"])
    assert Migration.objects.active().for_vm(first.vm_uuid).count() == 1
    work(queue)
    first.refresh_from_db()
    assert first.state == MigrationState.SUCCEEDED, report(first)


def test_it_double_submits_from_the_browser_into_one_migration(lab, lab_hosts, guest, queue, login):
    a, b = lab_hosts
    guest("idle")
    client = login("operator")
    inventory.refresh_host(a)
    vm = a.vms.get(name="idle")
    form = form_for(a, b, "idle")
    assert form.is_valid(), form.errors
    from migrator.wizard import _post_items

    data = dict(_post_items(form, {}))
    data.update({"vm": vm.pk, "review": "1"})
    review = client.post(reverse("migrator:new"), data)
    data.update({"reviewed": review.context["reviewed"], "start": "1"})
    del data["review"]
    first = client.post(reverse("migrator:new"), data)
    second = client.post(reverse("migrator:new"), data)
    assert first.status_code == 302 and second.status_code == 302
    assert Migration.objects.filter(vm_uuid=vm.uuid).count() == 1
    migration = Migration.objects.get(vm_uuid=vm.uuid)
    assert second["Location"] == migration.get_absolute_url()
    work(queue)


def test_it_reconciles_a_migration_whose_worker_was_killed(lab, lab_hosts, guest, queue, users):
    """kill -9 of the process running migrateToURI3: the P2P job goes on inside
    the source libvirtd; reconciliation finds it and records the truth."""
    a, b = lab_hosts
    guest("web-shared")
    migration = queue_it(a, b, users["operator"], "web-shared", bandwidth_mib_s=16)
    queue.empty()
    # The doomed worker: the same MigrationRun the job uses, in a child process.
    code = (
        "import sys; from hosts import gateway; "
        f"spec = gateway.MigrationSpec(dconnuri={b.effective_peer_uri!r}, migrate_uri='tcp://{b.migration_address}', "
        "bandwidth_mib_s=16, unsafe=True); "
        f"gateway.MigrationRun({connect_uri(a)!r}, {migration.vm_uuid!r}, spec).run()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    # The doomed worker's lease: renewed once, now, and never again.
    Migration.objects.filter(pk=migration.pk).update(
        state=MigrationState.RUNNING, worker_pid=child.pid, worker_host=os.uname().nodename, heartbeat_at=timezone.now()
    )
    assert gateway.wait_for(lambda: bool(gateway.active_job(connect_uri(a), migration.vm_uuid)), 30)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert reconcile(wait_s=120) == [], "its lease has not run out yet"
    Migration.objects.filter(pk=migration.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    settled = reconcile(wait_s=120)
    migration.refresh_from_db()
    print(report(migration))
    assert [m.pk for m in settled] == [migration.pk]
    assert migration.state in (MigrationState.SUCCEEDED, MigrationState.FAILED)
    where = lab.where("web-shared")
    running = [
        h
        for h, uri in (("A", connect_uri(a)), ("B", connect_uri(b)))
        if gateway.vm_state(uri, migration.vm_uuid) == "running"
    ]
    assert running == [where], "the VM runs exactly once"
    assert migration.vm_location == {"A": "lab-a", "B": "lab-b"}[where]
