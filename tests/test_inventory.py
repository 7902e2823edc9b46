from hosts import inventory
from hosts.models import Host, StorageClass

DISKS = [
    {
        "target": "vda",
        "device": "disk",
        "type": "file",
        "source": "/var/lib/libvirt/images/a.qcow2",
        "shareable": False,
        "readonly": False,
    },
    {
        "target": "vdb",
        "device": "disk",
        "type": "file",
        "source": "/mnt/nfs/b.qcow2",
        "shareable": False,
        "readonly": False,
    },
    {
        "target": "vdc",
        "device": "disk",
        "type": "file",
        "source": "/mnt/nfs/c.raw",
        "shareable": True,
        "readonly": False,
    },
    {
        "target": "vdd",
        "device": "disk",
        "type": "file",
        "source": "/var/lib/libvirt/images/d.raw",
        "shareable": False,
        "readonly": True,
    },
    {
        "target": "vde",
        "device": "disk",
        "type": "network",
        "source": "rbd://ceph/p/i",
        "shareable": False,
        "readonly": False,
    },
    {"target": "sda", "device": "cdrom", "type": "file", "source": "", "shareable": False, "readonly": True},
]


def test_it_classifies_shared_and_non_shared_vms():
    prefixes = ["/mnt/nfs/"]
    assert inventory.classify_storage(DISKS, prefixes) == StorageClass.NON_SHARED
    shared_only = [d for d in DISKS if d["target"] in ("vdb", "vdc", "vde", "sda")]
    assert inventory.classify_storage(shared_only, prefixes) == StorageClass.SHARED
    assert inventory.classify_storage([], prefixes) == StorageClass.SHARED


def test_it_says_which_disks_can_be_copied_and_why_not():
    verdicts = {v.target: v for v in inventory.disk_verdicts(DISKS, ["/mnt/nfs/"])}
    assert verdicts["vda"].migratable and not verdicts["vda"].shared
    assert not verdicts["vdb"].migratable and "shared storage" in verdicts["vdb"].reason
    assert not verdicts["vdc"].migratable and "shareable" in verdicts["vdc"].reason
    assert not verdicts["vdd"].migratable and "read-only" in verdicts["vdd"].reason
    assert not verdicts["vde"].migratable and verdicts["vde"].shared
    assert not verdicts["sda"].migratable


def test_it_stores_the_inventory_of_a_test_driver_host(test_host):
    assert test_host.inventory_error == ""
    assert test_host.info["hostname"]
    vm = test_host.vms.get(name="test")
    assert vm.running and vm.vcpus >= 1
    assert vm.disks[0]["target"] == "vda" and vm.disks[0]["type"] == "file"
    assert vm.storage_class == StorageClass.NON_SHARED


def test_it_uses_the_hosts_shared_prefixes(test_host):
    test_host.shared_prefixes = "/guest"
    test_host.save()
    inventory.refresh_host(test_host)
    assert test_host.vms.get(name="test").storage_class == StorageClass.SHARED


def test_it_keeps_the_last_inventory_when_a_host_is_unreachable(test_host):
    count = test_host.vms.count()
    test_host.uri = "qemu+tcp://127.0.0.1:1/system"
    test_host.save()
    inventory.refresh_host(test_host)
    test_host.refresh_from_db()
    assert test_host.inventory_error and test_host.inventory_error_code
    assert test_host.vms.count() == count


def test_it_removes_vms_that_left_the_host(test_host):
    test_host.vms.create(
        uuid="00000000-0000-0000-0000-000000000001", name="gone", state="running", storage_class=StorageClass.SHARED
    )
    inventory.refresh_host(Host.objects.get(pk=test_host.pk))
    assert not test_host.vms.filter(name="gone").exists()
