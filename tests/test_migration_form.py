"""The migration form's own rules and the plain-words parameters, without the
lab: every refusal names the thing and the fix, never a Python message."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from hosts.models import Host, StorageClass, VirtualMachine
from migrator.forms import MigrationForm
from migrator.parameters import describe_disk_plan
from migrator.policies import describe

pytestmark = pytest.mark.django_db


def _disk(target, source, **extra):
    return {
        "target": target,
        "device": "disk",
        "type": "file",
        "source": source,
        "format": "qcow2",
        "bus": "virtio",
        "capacity_bytes": 64 * 2**20,
        "allocation_bytes": 0,
        "shareable": False,
        "readonly": False,
        "protocol": "",
        **extra,
    }


DISKS = [
    _disk("vda", "/var/lib/libvirt/images/db-vda.qcow2"),
    _disk("vdb", "/var/lib/libvirt/images/db-vdb.img", format="raw", readonly=True),
    _disk("vdc", "/shared/db-vdc.img", format="raw", shareable=True),
    _disk("vdd", "/shared/db-vdd.qcow2"),
    _disk("vde", "/dev/sdb", type="block", format="raw"),
    {**_disk("hdc", ""), "device": "cdrom"},
]


@pytest.fixture
def hosts():
    a = Host.objects.create(name="h-a", uri="test:///default", shared_prefixes="/shared/\n", info={"logical_cpus": 2})
    b = Host.objects.create(name="h-b", uri="test:///default", shared_prefixes="/shared/\n")
    return a, b


@pytest.fixture
def vm(hosts):
    return VirtualMachine.objects.create(
        host=hosts[0],
        uuid="6c61622d-0000-0000-0000-000000000001",
        name="db",
        state="running",
        vcpus=1,
        memory_kib=262144,
        storage_class=StorageClass.NON_SHARED,
        disks=DISKS,
        details={"logical_cpus": 2},
    )


def errors_for(vm, destination, **overrides):
    form = MigrationForm(MigrationForm.defaults(vm, destination, **overrides), vm=vm, run_prechecks=False)
    assert not form.is_valid()
    return form.errors


def test_it_copies_every_writable_local_disk_by_default(vm, hosts):
    plan = MigrationForm.default_parameters(vm, hosts[1])
    assert plan.disks == ("vda",)
    assert plan.create_images and plan.remove_source_images
    assert plan.replace_stale_images is None, "left for the next step to decide"
    assert plan.disk_plan == (
        {"target": "vda", "source": DISKS[0]["source"], "format": "qcow2", "capacity_bytes": 64 * 2**20},
    )


def test_it_names_each_disk_that_cannot_be_copied_and_why(vm, hosts):
    errors = errors_for(vm, hosts[1], disks=["vda", "vdb", "vdc", "vdd", "vde"])["disks"]
    by_disk = {e.split(" ", 1)[0]: e for e in errors}
    assert set(by_disk) == {"vdb", "vdc", "vdd", "vde"}
    assert "read-only" in by_disk["vdb"]
    assert "shareable" in by_disk["vdc"]
    assert "on shared storage (/shared/db-vdd.qcow2) and stays where it is" in by_disk["vdd"]
    assert "raw block device (/dev/sdb)" in by_disk["vde"] and "must be a file" in by_disk["vde"]


def test_it_names_a_disk_the_vm_does_not_have(vm, hosts):
    errors = errors_for(vm, hosts[1], disks=["vdz"])["disks"]
    assert errors == ["db has no disk vdz (its disks: vda, vdb, vdc, vdd, vde, hdc)."]


def test_it_greys_out_the_disks_that_cannot_be_copied(vm, hosts):
    html = str(MigrationForm(vm=vm)["disks"])
    assert 'value="vda"' in html and 'value="vdb"' in html
    assert html.count("disabled") == 4  # vdb, vdc, vdd, vde; the cdrom is not listed
    assert 'value="hdc"' not in html


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"timeout_s": 0}, "timeout_s", "The timeout is at least 1 s; leave it empty for no timeout."),
        ({"compression_level": 99}, "compression_level", "A compression level needs a compression method"),
        ({"pin_cpus": "abc"}, "pin_cpus", "'abc' is not a CPU number or a range such as 0-1."),
        ({"pin_cpus": "1-0"}, "pin_cpus", "runs backwards"),
        ({"pin_cpus": "0-7"}, "pin_cpus", "must name CPUs between 0 and 1"),
        ({"parallel_connections": 1}, "parallel_connections", "Use 0 for a single channel"),
    ],
)
def test_it_refuses_out_of_range_values_in_plain_words(vm, hosts, overrides, field, message):
    errors = errors_for(vm, hosts[1], **overrides)
    text = " ".join(errors[field])
    assert message in text, text
    assert "invalid literal" not in text and "Ensure this value" not in text


def test_it_checks_the_compression_level_per_method(vm, hosts):
    cases = {("mt", 10): "mt levels go from 0 to 9, not 10.", ("xbzrle", 1): "xbzrle has no compression level"}
    for (method, level), message in cases.items():
        data = MigrationForm.defaults(vm, hosts[1], compression=method, compression_level=level)
        form = MigrationForm(data, vm=vm, run_prechecks=False)
        form.fields["compression"].choices = [("", "None"), ("mt", "mt"), ("xbzrle", "xbzrle")]
        assert not form.is_valid()
        assert message in " ".join(form.errors["compression_level"])
    data = MigrationForm.defaults(vm, hosts[1], compression="mt", compression_level=0)
    form = MigrationForm(data, vm=vm, run_prechecks=False)
    form.fields["compression"].choices = [("", "None"), ("mt", "mt")]
    assert form.is_valid(), form.errors
    assert form.parameters().compression_level == 0


def test_it_describes_the_disk_plan_in_words(vm, hosts):
    lines = describe_disk_plan(vm, MigrationForm.default_parameters(vm, hosts[1]))
    assert lines[0] == "Copy vda (qcow2, 64 MiB) into a new image created on the destination"
    assert lines[1].startswith("vdb stays: it is read-only")
    assert any(line.startswith("vdd stays: it is on shared storage") for line in lines)
    assert len(lines) == 5, "one line per data disk, none for the cdrom"


def test_it_describes_parameters_with_labels_and_units(vm, hosts):
    params = MigrationForm.default_parameters(vm, hosts[1]).replace(
        bandwidth_mib_s=100, timeout_s=60, timeout_action="suspend", compression="mt", compression_level=1
    )
    rows = dict(describe(params))
    assert rows["Copy disks"] == "vda (qcow2, 64 MiB)"
    assert rows["Source images after success"] == "removed"
    assert rows["Bandwidth limit"] == "100 MiB/s"
    assert rows["Max downtime"] == "500 ms"
    assert rows["Timeout"] == "after 60 s, suspend the VM so the copy finishes"
    assert rows["Compression"] == "mt (multi-threaded zlib), level 1"
    assert all("True" not in v and "None" not in v and "[]" not in v for v in rows.values()), rows


def test_the_migration_page_shows_parameters_in_words(login, vm, hosts):
    from migrator.models import Migration

    params = MigrationForm.default_parameters(vm, hosts[1])
    migration = Migration.objects.create(
        vm=vm,
        vm_uuid=vm.uuid,
        vm_name=vm.name,
        source=hosts[0],
        source_name="h-a",
        destination=hosts[1],
        destination_name="h-b",
        storage_class=vm.storage_class,
        parameters=params.as_record(),
        applied_parameters={"flags": 1 | 2 | 8 | 64, "params": {"migrate_disks": ["vda"]}, "dconnuri": "qemu+tcp://b"},
    )
    page = login("auditor").get(migration.get_absolute_url()).content.decode()
    assert "Copy disks</th><td>vda (qcow2, 64 MiB)" in page
    assert "create_images" not in page.split('id="libvirt-call"')[0]
    assert "VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER" in page


def test_migrate_vm_says_why_it_refuses(hosts, users):
    from hosts import inventory

    inventory.refresh_host(hosts[0])  # the test driver's own VM "test", vda on /guest (local)
    cases = {
        ("--timeout", "0"): "--timeout: The timeout is at least 1 s",
        ("--compression-level", "99"): "--compression-level: A compression level needs a compression method",
        ("--pin", "abc"): "--pin: 'abc' is not a CPU number",
        ("--disks", "vdq"): "--disks: test has no disk vdq",
    }
    for args, message in cases.items():
        with pytest.raises(CommandError) as refused:
            call_command(
                "migrate_vm", "test", "--from", "h-a", "--to", "h-b", "--user", "olivia", *args, stdout=io.StringIO()
            )
        assert message in str(refused.value), str(refused.value)
