"""The checks that need no libvirt call: they judge host facts (a HostInfo)
and the database. `run_prechecks` runs them on the facts it has just read
from both hosts; `run_inventory_prechecks` runs them on the facts the last
inventory refresh stored, so a plan that judges every VM of a host against
every other host (the evacuation planner) takes no host's time. The job
re-checks everything with libvirt just before it migrates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from hosts import gateway, uris
from hosts.certificates.readiness import tls_readiness
from hosts.inventory import DiskVerdict, disk_verdicts
from hosts.models import Host, VirtualMachine

from ..models import Migration
from ..parameters import MigrationParameters
from .network import _check_networks
from .report import FAIL, PASS, WARN, Report
from .storage import check_storage_stored

_HOST_INFO_FIELDS = {f.name for f in fields(gateway.HostInfo)}
_NETWORK_FIELDS = {f.name for f in fields(gateway.NetworkInfo)}


def stored_host_info(host: Host) -> gateway.HostInfo | None:
    """The facts the last inventory refresh stored for `host`, or None when
    it has none (never refreshed, or stored by an incompatible version)."""
    data = host.info or {}
    try:
        known = {k: v for k, v in data.items() if k in _HOST_INFO_FIELDS}
        known["network_details"] = {
            name: gateway.NetworkInfo(**{k: v for k, v in net.items() if k in _NETWORK_FIELDS})
            for name, net in (data.get("network_details") or {}).items()
        }
        return gateway.HostInfo(**known)
    except (TypeError, AttributeError):
        return None


def check_distinct(report: Report, source: Host, destination: Host, src, dst) -> None:
    # Drivers without a host UUID (the test driver) are told apart by hostname.
    if (src.host_uuid or src.hostname) == (dst.host_uuid or dst.hostname) and source.uri == destination.uri:
        report.add("distinct hosts", FAIL, "Source and destination are the same libvirt host; choose another host.")
    elif src.host_uuid and src.host_uuid == dst.host_uuid:
        report.add(
            "distinct hosts",
            FAIL,
            f"Both hosts report host UUID {src.host_uuid}: they are the same machine, or one is a clone "
            "with a copied host_uuid in libvirtd.conf. Give each host its own UUID.",
        )
    else:
        report.add("distinct hosts", PASS, "source and destination are different hosts")


def check_cpu_model(report: Report, src, dst) -> bool:
    """R3, the part the host facts decide: only homogeneous migration. Adds
    a failure and answers False when the host CPUs differ; adds nothing when
    they match (the caller says what else it compared)."""
    if (src.cpu_vendor, src.cpu_model, src.arch) != (dst.cpu_vendor, dst.cpu_model, dst.arch):
        report.add(
            "CPU model",
            FAIL,
            f"Only homogeneous migration is supported: source CPU is {src.cpu_vendor} {src.cpu_model} "
            f"({src.arch}), destination is {dst.cpu_vendor} {dst.cpu_model} ({dst.arch}).",
            "R3",
        )
        return False
    return True


def check_capacity(report: Report, vm: VirtualMachine, destination: Host, dst, committed_kib: int = 0) -> None:
    """R5: cores and free memory; `committed_kib` is memory already promised
    to other VMs moving to `destination` (earlier steps of the same plan)."""
    if dst.physical_cores < vm.vcpus:
        report.add(
            "CPU cores",
            WARN,
            f"{destination.name} has {dst.physical_cores} physical cores for {vm.vcpus} vCPUs: "
            "the VM will run with degraded performance there.",
            "R5",
        )
    else:
        report.add("CPU cores", PASS, f"{dst.physical_cores} physical cores ≥ {vm.vcpus} vCPUs", "R5")
    check_memory(report, vm, destination, dst, committed_kib)


def check_memory(report: Report, vm: VirtualMachine, destination: Host, dst, committed_kib: int = 0) -> None:
    need_mib, free_mib = vm.memory_kib // 1024, dst.memory_free_kib // 1024
    left_kib = dst.memory_free_kib - committed_kib
    if committed_kib and left_kib < vm.memory_kib:
        report.add(
            "memory",
            FAIL,
            f"{destination.name} has {free_mib} MiB free, {committed_kib // 1024} MiB of it taken by earlier steps "
            f"of this plan: {max(0, left_kib) // 1024} MiB left, the VM needs {need_mib} MiB; free memory there "
            "or choose another host.",
            "R5",
        )
    elif left_kib < vm.memory_kib:
        report.add(
            "memory",
            FAIL,
            f"{destination.name} has {free_mib} MiB free, the VM needs {need_mib} MiB; free memory there "
            "or choose another host.",
            "R5",
        )
    elif committed_kib:
        report.add(
            "memory",
            PASS,
            f"{left_kib // 1024} MiB free after earlier steps of this plan ≥ {need_mib} MiB needed",
            "R5",
        )
    else:
        report.add("memory", PASS, f"{free_mib} MiB free ≥ {need_mib} MiB needed", "R5")


def name_taken(report: Report, destination: Host, name: str, uuid: str, state: str) -> None:
    report.add(
        "name free",
        FAIL,
        f"{destination.name} already has a VM named {name} (UUID {uuid}, {state}); remove or rename it there first.",
    )


def check_tls(report: Report, source: Host, destination: Host, params: MigrationParameters, findings=None) -> None:
    """R14, when the migration is encrypted; `findings`: tls_readiness's
    answer for the pair when the caller has it already."""
    if not params.tls:
        return
    for status, message in tls_readiness(source, destination) if findings is None else findings:
        report.add("TLS", status, message, "R14")


def add_notes(report: Report, vm: VirtualMachine, params: MigrationParameters) -> None:
    if vm.details.get("hugepages"):
        report.add(
            "hugepages",
            PASS,
            "the VM uses hugepages; hosts whose kernel has KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE "
            "(Linux 5.8 and newer with KVM) migrate it with less overhead",
            "R16",
        )
    if params.unsafe:
        report.add(
            "unsafe",
            WARN,
            "'Unsafe' skips libvirt's safety checks on disk caching; use it only for shared storage "
            "that libvirt cannot recognise as safe.",
            "R12",
        )


def stored_inventory_problem(host: Host) -> str:
    """Why the stored facts of `host` cannot be relied on, in plain words; ""
    when they can."""
    if host.inventory_refreshed_at is None or not host.info:
        return f"{host.name} has no stored inventory yet; refresh the host (Hosts → {host.name} → Refresh)."
    if host.inventory_error:
        return (
            f"{host.name} did not answer its last inventory refresh ({host.inventory_error}); "
            "make it reachable and refresh it."
        )
    return ""


class StoredInventory:
    """What the database knows about a set of hosts, read once: each host's
    stored facts, the VMs and disk images stored on it, the active migration
    of each VM, and TLS readiness per pair (read when first asked)."""

    def __init__(self, hosts: Iterable[Host], vms: Iterable[VirtualMachine] = ()):
        self.hosts = {h.pk: h for h in hosts}
        self.facts = {pk: stored_host_info(h) for pk, h in self.hosts.items()}
        self.problems = {pk: stored_inventory_problem(h) for pk, h in self.hosts.items()}
        self.peer_refusals = {pk: uris.refusal(h.effective_peer_uri) for pk, h in self.hosts.items()}
        self.by_uuid: dict[int, dict[str, tuple[str, str]]] = defaultdict(dict)
        self.by_name: dict[int, dict[str, tuple[str, str]]] = defaultdict(dict)
        self.disk_users: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        rows = VirtualMachine.objects.filter(host_id__in=list(self.hosts)).values_list(
            "host_id", "uuid", "name", "state", "disks"
        )
        for host_id, uuid, name, state, disks in rows:
            self.by_uuid[host_id][uuid] = (name, uuid, state)
            self.by_name[host_id][name] = (name, uuid, state)
            for disk in disks or ():
                if disk.get("source"):
                    self.disk_users[host_id][disk["source"]].append(name)
        uuids = [vm.uuid for vm in vms]
        self.active: dict[str, int] = {}
        if uuids:
            for uuid, pk in Migration.objects.active().filter(vm_uuid__in=uuids).values_list("vm_uuid", "pk"):
                self.active.setdefault(uuid, pk)
        self.prefixes = {pk: h.prefixes for pk, h in self.hosts.items()}
        self._verdicts: dict[int, list[DiskVerdict]] = {}
        self._tls: dict[tuple[int, int], list[tuple[str, str]]] = {}

    def verdicts(self, vm: VirtualMachine, source: Host) -> list[DiskVerdict]:
        """The VM's disk verdicts on its source, computed once per VM."""
        if vm.pk not in self._verdicts:
            self._verdicts[vm.pk] = disk_verdicts(vm.disks, self.prefixes.get(source.pk, source.prefixes))
        return self._verdicts[vm.pk]

    def tls_findings(self, source: Host, destination: Host) -> list[tuple[str, str]]:
        key = (source.pk, destination.pk)
        if key not in self._tls:
            self._tls[key] = tls_readiness(source, destination)
        return self._tls[key]


def run_inventory_prechecks(
    vm: VirtualMachine,
    source: Host,
    destination: Host,
    params: MigrationParameters | dict[str, Any] | None = None,
    *,
    inventory: StoredInventory | None = None,
    committed_kib: int = 0,
) -> Report:
    """run_prechecks' judgement from stored facts alone (no libvirt call):
    R2 from the database and the stored VM state, R1 from the last refresh,
    host CPUs (R3), cores and memory (R5, less `committed_kib`), every NIC
    (R4), VMs stored on the destination, the disks against the stored
    inventory (R6, R7) and TLS readiness (R14). What only libvirt can tell
    (the guest CPU model against the destination, images and pools on the
    destination, its free disk space) is left to the job's re-check and said
    so. `inventory` carries what many reports share."""
    params = MigrationParameters.from_record(params)
    if inventory is None:
        inventory = StoredInventory([source, destination], [vm])
    report = Report()

    active = inventory.active.get(vm.uuid)
    if active:
        report.add("not migrating", FAIL, f"{vm.name} is already being migrated (migration #{active}).", "R2")
    else:
        report.add("not migrating", PASS, "no other migration of this VM is in progress", "R2")
    if destination.pk == source.pk:
        report.add("destination", FAIL, "The destination is the source host; choose another host.")
        return report
    if not vm.running:
        report.add("VM running", FAIL, f"{vm.name} is {vm.state}; only running VMs are live-migrated.", "R2")
    else:
        report.add("VM running", PASS, f"{vm.name} is running on {source.name} (stored inventory)", "R2")

    refused = inventory.peer_refusals[destination.pk]
    if refused:
        report.add(
            "destination peer URI",
            FAIL,
            f"The peer URI of {destination.name} is not allowed: {refused} Edit the host to change it.",
            "R1",
        )
        return report
    for role, host in (("source", source), ("destination", destination)):
        problem = inventory.problems[host.pk]
        if not problem and inventory.facts[host.pk] is None:
            problem = f"The stored inventory of {host.name} cannot be read; refresh the host."
        if problem:
            report.add(f"{role} reachable", FAIL, problem, "R1")
            return report
    src, dst = inventory.facts[source.pk], inventory.facts[destination.pk]
    report.add(
        "destination reachable",
        PASS,
        f"{destination.name} answered its last inventory refresh (libvirt {dst.libvirt_version})",
        "R1",
    )

    check_distinct(report, source, destination, src, dst)
    if check_cpu_model(report, src, dst):
        report.add(
            "CPU model",
            PASS,
            f"identical host CPUs ({src.cpu_vendor} {src.cpu_model}); the VM's CPU model is compared on "
            f"{destination.name} when the migration starts",
            "R3",
        )
    check_capacity(report, vm, destination, dst, committed_kib)
    _check_networks(report, vm, source, destination, src, dst)
    found = inventory.by_uuid[destination.pk].get(vm.uuid) or inventory.by_name[destination.pk].get(vm.name)
    if found:
        name_taken(report, destination, *found)
    else:
        report.add("name free", PASS, f"no VM of that name or UUID is stored for {destination.name}")
    check_storage_stored(
        report,
        vm,
        source,
        destination,
        params,
        inventory.disk_users[destination.pk],
        verdicts=inventory.verdicts(vm, source),
        prefixes=inventory.prefixes[destination.pk],
    )
    if params.tls:
        check_tls(report, source, destination, params, inventory.tls_findings(source, destination))
    add_notes(report, vm, params)
    return report
