"""Reads hosts through the gateway and stores what it finds, so pages never
call libvirt once per host per request. Also decides each VM's storage class
(R7): a VM whose every disk is on shared storage migrates without copying
disks; any local disk makes it a non-shared VM.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from . import gateway
from .connection import connect_uri
from .models import Host, StorageClass, VirtualMachine

COPYABLE_DEVICES = ("disk", "lun")


@dataclass(frozen=True)
class DiskVerdict:
    target: str
    shared: bool
    migratable: bool  # may be chosen for --copy-storage / migrate_disks
    reason: str  # a clause: "<target> cannot be copied: <reason>." / "<target>: <reason>."
    kind: str = "local"  # local, shared, network, shareable, readonly, block, drive
    data: bool = True  # a disk or LUN with an image: the kind that could be copied


def disk_is_shared(disk: dict, prefixes: list[str]) -> bool:
    if disk["type"] == "network":
        return True
    source = disk.get("source") or ""
    return any(source.startswith(prefix) for prefix in prefixes)


def disk_verdicts(disks: list[dict], prefixes: list[str]) -> list[DiskVerdict]:
    """Per disk: shared or not, and whether it may be copied (R6), with the
    reason in words a refusal can quote."""
    return [_disk_verdict(disk, prefixes) for disk in disks]


def _disk_verdict(disk: dict, prefixes: list[str]) -> DiskVerdict:
    target, source = disk["target"], disk.get("source") or ""
    shared = disk_is_shared(disk, prefixes)
    if disk["device"] not in COPYABLE_DEVICES or not source:
        return DiskVerdict(target, shared, False, f"{disk['device']} drives are not copied", "drive", data=False)
    if disk.get("shareable"):
        reason = (
            "it is shareable (<shareable/>): other VMs may have it open at the same time, and shareable disks "
            "are never migrated (R6); it must be reachable from the destination"
        )
        return DiskVerdict(target, shared, False, reason, "shareable")
    if disk.get("readonly"):
        reason = (
            f"it is read-only: read-only disks are never migrated (R6); the destination needs its own copy at {source}"
        )
        return DiskVerdict(target, shared, False, reason, "readonly")
    if disk["type"] == "network":
        return DiskVerdict(target, True, False, "it is network storage, reached by both hosts", "network")
    if shared:
        reason = f"it is on shared storage ({source}) and stays where it is: the destination reads it at the same path"
        return DiskVerdict(target, True, False, reason, "shared")
    if disk["type"] == "block" or source.startswith("/dev/"):
        reason = (
            f"it is a raw block device ({source}); the destination image must be a file (R6). Convert the disk "
            "to a file image first, or put it on shared storage"
        )
        return DiskVerdict(target, False, False, reason, "block")
    return DiskVerdict(target, False, True, "local disk: copied to the destination", "local")


def classify_storage(disks: list[dict], prefixes: list[str]) -> str:
    """Shared when every disk that holds data is on shared storage (R7)."""
    data_disks = [d for d in disks if d["device"] in COPYABLE_DEVICES and d.get("source")]
    if all(disk_is_shared(d, prefixes) for d in data_disks):
        return StorageClass.SHARED
    return StorageClass.NON_SHARED


def _vm_fields(vm: gateway.VMInfo, prefixes: list[str]) -> dict:
    disks = [d.as_dict() for d in vm.disks]
    return {
        "name": vm.name,
        "state": vm.state,
        "vcpus": vm.vcpus,
        "memory_kib": vm.memory_kib,
        "persistent": vm.persistent,
        "domain_type": vm.domain_type,
        "storage_class": classify_storage(disks, prefixes),
        "disks": disks,
        "interfaces": [i.as_dict() for i in vm.interfaces],
        "details": {
            "arch": vm.arch,
            "machine": vm.machine,
            "emulator": vm.emulator,
            "hugepages": vm.hugepages,
            "cpu_xml": vm.cpu_xml,
            "emulator_pin": vm.emulator_pin,
        },
        "seen_at": timezone.now(),
    }


def refresh_host(host: Host) -> Host:
    """Read the host and its VMs; on failure keep the last inventory and record why."""
    try:
        info = gateway.host_info(connect_uri(host))
        vms = gateway.list_vms(connect_uri(host))
    except gateway.GatewayError as error:
        host.record_inventory_error(error.naming(host.name))
        return host
    store_inventory(host, info, vms)
    return host


@transaction.atomic
def store_inventory(host: Host, info: gateway.HostInfo, vms: list[gateway.VMInfo]) -> None:
    host.info = info.as_dict()
    host.inventory_refreshed_at = timezone.now()
    host.inventory_error = ""
    host.inventory_error_code = None
    host.save(update_fields=["info", "inventory_refreshed_at", "inventory_error", "inventory_error_code"])
    seen = []
    for vm in vms:
        VirtualMachine.objects.update_or_create(host=host, uuid=vm.uuid, defaults=_vm_fields(vm, host.prefixes))
        seen.append(vm.uuid)
    host.vms.exclude(uuid__in=seen).delete()


def refresh_vm(host: Host, uuid: str) -> VirtualMachine | None:
    """Re-read one VM (after a migration or a lifecycle action)."""
    vm = gateway.find_vm(connect_uri(host), uuid=uuid)
    if vm is None:
        host.vms.filter(uuid=uuid).delete()
        return None
    row, _ = VirtualMachine.objects.update_or_create(host=host, uuid=uuid, defaults=_vm_fields(vm, host.prefixes))
    return row


def refresh_all() -> None:
    for host in Host.objects.enabled():
        refresh_host(host)
