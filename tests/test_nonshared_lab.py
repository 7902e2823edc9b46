"""VMs with local disks on the lab: the default disk plan, there and back,
source cleanup only after a certain success, stale images, raw and mixed
disks (R6, R7, R13)."""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.lab import DiskSpec
from migrator.audit.models import AuditEvent
from migrator.forms import MigrationForm
from migrator.models import MigrationState

from .test_migration_lab import cancel_after, form_for, migrate, queue_it, report, work

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def qemu_io(path, command: str, fmt: str = "qcow2") -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True)


def write_pattern(lab, host_key: str, name: str, path: str, fmt: str = "qcow2", pattern: str = "0x5a") -> None:
    """Write a pattern on the guest's disk while it is off, then boot it again."""
    lab.stop_guest(name)
    written = qemu_io(lab.host_path(host_key, path), f"write -P {pattern} 1M 1M", fmt)
    assert written.returncode == 0, written.stderr
    gateway.start_domain(lab.uri(host_key), name)
    lab.wait_booted(name, host_key)


def assert_pattern(lab, host_key: str, path: str, fmt: str = "qcow2", pattern: str = "0x5a") -> None:
    read = qemu_io(lab.host_path(host_key, path), f"read -P {pattern} 1M 1M", fmt)
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout + read.stderr


def disk_path(host, vm_name: str, target: str) -> str:
    inventory.refresh_host(host)
    vm = host.vms.get(name=vm_name)
    return next(d for d in vm.disks if d["target"] == target)["source"]


def test_it_offers_the_default_disk_plan_on_the_destination_step(lab, lab_hosts, guest, login):
    a, b = lab_hosts
    guest("db-local")
    inventory.refresh_host(a)
    vm = a.vms.get(name="db-local")
    page = login("operator").get(reverse("migrator:new"), {"vm": vm.pk}).content.decode()
    assert "Choose lab-b" in page, page
    assert "Copy vda (qcow2, 64 MiB) into a new image created on the destination" in page
    assert "vdb stays: it is read-only" in page and "vdc stays: it is shareable" in page
    assert "does not exist on lab-b and it is not copied" not in page


def test_it_migrates_db_local_there_and_back_and_frees_the_source(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("db-local")
    vda, vdb, vdc = (disk_path(a, "db-local", t) for t in ("vda", "vdb", "vdc"))
    write_pattern(lab, "A", "db-local", vda)
    untouched = {path: lab.host_path("A", path).stat().st_mtime for path in (vdb, vdc)}

    there = migrate(queue, a, b, users["operator"], "db-local")  # the default plan: copy vda
    print(report(there))
    assert there.state == MigrationState.SUCCEEDED, report(there)
    assert there.parameters["disks"] == ["vda"] and there.parameters["remove_source_images"]
    assert lab.where("db-local") == "B"
    assert not lab.host_path("A", vda).exists(), "the source's copy of vda was removed"
    assert lab.host_path("B", vda).exists()
    assert f"Removed {vda} from lab-a" in there.outcome_note
    assert any(e.state == "cleanup" for e in there.events.all())
    assert AuditEvent.objects.filter(action="migration.source_image_removed", object_id=str(there.pk)).count() == 1
    for path, mtime in untouched.items():
        assert lab.host_path("A", path).stat().st_mtime == mtime, f"{path} untouched"
    assert any(s.disk_total_bytes for s in there.samples.all()), "disk progress was sampled"

    back = migrate(queue, b, a, users["operator"], "db-local")
    print(report(back))
    assert back.state == MigrationState.SUCCEEDED, report(back)
    assert lab.where("db-local") == "A"
    assert not lab.host_path("B", vda).exists(), "the return trip freed lab-b"
    lab.wait_tick("db-local", "A")
    lab.stop_guest("db-local")
    assert_pattern(lab, "A", vda)
    assert lab.host_path("B", vdb).exists(), "read-only images stay installed on each host"


def test_it_keeps_the_source_image_when_a_copy_is_cancelled(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("db-local")
    vda = disk_path(a, "db-local", "vda")
    migration = queue_it(a, b, users["operator"], "db-local", bandwidth_mib_s=2)

    cancel_after(migration, users["operator"], 4)
    work(queue)
    migration.refresh_from_db()
    print(report(migration))
    assert migration.state == MigrationState.CANCELLED, report(migration)
    assert lab.where("db-local") == "A"
    assert lab.host_path("A", vda).exists(), "the source keeps its image"
    assert not lab.host_path("B", vda).exists(), "the image created on the destination was removed"
    assert f"Deleted {vda} created on lab-b" in migration.outcome_note
    assert not AuditEvent.objects.filter(action="migration.source_image_removed").exists()


def test_it_keeps_the_source_image_when_the_vm_stays_defined_there(lab, lab_hosts, guest, queue, users):
    a, b = lab_hosts
    guest("db-local")
    vda = disk_path(a, "db-local", "vda")
    migration = migrate(queue, a, b, users["operator"], "db-local", undefine_source=False)
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert lab.host_path("A", vda).exists()
    assert "still defined on lab-a" in migration.outcome_note


def test_it_names_a_stale_image_and_replaces_it_only_when_asked(lab, lab_hosts, guest, queue, users, login):
    a, b = lab_hosts
    guest("db-local")
    vda = disk_path(a, "db-local", "vda")
    stale = lab.host_path("B", vda)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stale), "64M"], check=True)
    inventory.refresh_host(a)
    vm = a.vms.get(name="db-local")

    page = login("operator").get(reverse("migrator:new"), {"vm": vm.pk}).content.decode()
    assert "Choose lab-b" in page and "no VM there uses it: a stale copy" in page
    assert "The next step asks whether to replace it" in page

    refused = form_for(a, b, "db-local")
    assert not refused.is_valid()
    message = " ".join(refused.non_field_errors())
    assert "Replace stale images on the destination" in message and vda in message, message

    migration = migrate(queue, a, b, users["operator"], "db-local", replace_stale_images=True)
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    assert any("Deleted the stale image" in e.message for e in migration.events.all())
    assert AuditEvent.objects.filter(action="migration.stale_image_removed").count() == 1


def test_it_migrates_a_raw_local_disk(lab, lab_hosts, queue, users):
    a, b = lab_hosts
    lab.define_guest("raw-local", 128, dirty_mb=0, disks=[DiskSpec("vda", size_mib=16, format="raw")])
    try:
        lab.reset_guest("raw-local")
        vda = disk_path(a, "raw-local", "vda")
        write_pattern(lab, "A", "raw-local", vda, fmt="raw")
        migration = migrate(queue, a, b, users["operator"], "raw-local")
        print(report(migration))
        assert migration.state == MigrationState.SUCCEEDED, report(migration)
        assert migration.parameters["disk_plan"][0]["format"] == "raw"
        info = subprocess.run(["qemu-img", "info", str(lab.host_path("B", vda))], capture_output=True, text=True)
        assert "file format: raw" in info.stdout and "16 MiB" in info.stdout, info.stdout
        lab.stop_guest("raw-local")
        assert_pattern(lab, "B", vda, fmt="raw")
        assert not lab.host_path("A", vda).exists()
    finally:
        lab.remove_guest("raw-local")


def test_it_copies_only_the_local_disk_of_a_mixed_vm(lab, lab_hosts, queue, users):
    a, b = lab_hosts
    lab.define_guest("mixed-disks", 128, dirty_mb=0, disks=[DiskSpec("vda", shared=True), DiskSpec("vdb", size_mib=16)])
    try:
        lab.reset_guest("mixed-disks")
        vda, vdb = disk_path(a, "mixed-disks", "vda"), disk_path(a, "mixed-disks", "vdb")
        inventory.refresh_host(a)
        assert MigrationForm.default_parameters(a.vms.get(name="mixed-disks"), b).disks == ("vdb",)
        shared_mtime = lab.host_path("A", vda).stat().st_mtime
        migration = migrate(queue, a, b, users["operator"], "mixed-disks")
        print(report(migration))
        assert migration.state == MigrationState.SUCCEEDED, report(migration)
        assert migration.parameters["disks"] == ["vdb"]
        assert lab.host_path("A", vda).exists() and lab.host_path("A", vda).stat().st_mtime == shared_mtime
        assert lab.host_path("B", vdb).exists() and not lab.host_path("A", vdb).exists()
        assert gateway.vm_state(connect_uri(b), migration.vm_uuid) == "running"
    finally:
        lab.remove_guest("mixed-disks")


def test_it_explains_why_a_shared_disk_cannot_be_copied(lab, lab_hosts):
    a, b = lab_hosts
    form = form_for(a, b, "web-shared", disks=["vda"])
    assert not form.is_valid()
    error = " ".join(form.errors["disks"])
    assert "vda cannot be copied: it is on shared storage" in error and "stays where it is" in error, error
