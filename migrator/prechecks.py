"""The health check before migrating: one report, each line pass, warn or
fail with a reason in plain words (R1–R7, R14, R16).

The wizard shows it per destination and on the review step; the job runs it
again just before it migrates, because hosts change in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hosts import gateway
from hosts.certstore import tls_readiness
from hosts.inventory import disk_verdicts
from hosts.models import Host, StorageClass, VirtualMachine

from .models import Migration
from .parameters import MigrationParameters

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    requirement: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, message: str, requirement: str = "") -> None:
        self.checks.append(Check(name, status, message, requirement))

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        if self.failures:
            return "blocked"
        return "warnings" if self.warnings else "ok"

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.checks]

    def summary(self) -> str:
        if self.failures:
            return "; ".join(c.message for c in self.failures)
        return "; ".join(c.message for c in self.warnings) or "all checks passed"


@dataclass
class Facts:
    """Live facts read once per report, so every check sees the same moment."""

    source_info: gateway.HostInfo | None = None
    dest_info: gateway.HostInfo | None = None
    source_error: gateway.GatewayError | None = None
    dest_error: gateway.GatewayError | None = None


def _read(fn: Callable[[], Any]) -> tuple[Any, gateway.GatewayError | None]:
    try:
        return fn(), None
    except gateway.GatewayError as error:
        return None, error


def chosen_disks(vm: VirtualMachine, params: MigrationParameters) -> list[dict[str, Any]]:
    targets = set(params.disks)
    return [d for d in vm.disks if d["target"] in targets]


def run_prechecks(
    vm: VirtualMachine,
    source: Host,
    destination: Host,
    params: MigrationParameters | dict[str, Any] | None = None,
    *,
    exclude_migration: int | None = None,
) -> Report:
    """Every check for `vm` moving to `destination` under `params`; without
    parameters the disks are judged as if nothing were copied."""
    judge_disk_plan = params is not None
    params = MigrationParameters.from_record(params) if judge_disk_plan else MigrationParameters(create_images=False)
    report = Report()
    vm_dict = {**vm.details, "domain_type": vm.domain_type}

    # R2: one migration at a time, of a running VM.
    active = Migration.objects.active().for_vm(vm.uuid)
    if exclude_migration:
        active = active.exclude(pk=exclude_migration)
    active = active.first()
    if active:
        report.add("not migrating", FAIL, f"{vm.name} is already being migrated (migration #{active.pk}).", "R2")
    else:
        report.add("not migrating", PASS, "no other migration of this VM is in progress", "R2")

    if destination.pk == source.pk:
        report.add("destination", FAIL, "The destination is the source host; choose another host.")
        return report

    facts = Facts()
    facts.source_info, facts.source_error = _read(lambda: gateway.host_info(source.connect_uri))
    state, state_error = _read(lambda: gateway.vm_state(source.connect_uri, vm.uuid))
    if facts.source_error or state_error:
        error = facts.source_error or state_error
        report.add("source reachable", FAIL, f"{source.name} does not answer: {error.message}", "R1")
    elif state is None:
        report.add("VM running", FAIL, f"{vm.name} is no longer on {source.name}; refresh the inventory.", "R2")
    elif state not in gateway.RUNNING_STATES:
        report.add("VM running", FAIL, f"{vm.name} is {state}; only running VMs are live-migrated.", "R2")
    else:
        report.add("VM running", PASS, f"{vm.name} is running on {source.name}", "R2")

    facts.dest_info, facts.dest_error = _read(lambda: gateway.host_info(destination.connect_uri))
    if facts.dest_error:
        report.add(
            "destination reachable",
            FAIL,
            f"{destination.name} does not answer: {facts.dest_error.message} {facts.dest_error.hint}".strip(),
            "R1",
        )
        return report
    report.add(
        "destination reachable",
        PASS,
        f"{destination.name} answers (libvirt {facts.dest_info.libvirt_version}); the source's own path to it "
        "is tested when the migration connects",
        "R1",
    )
    src, dst = facts.source_info, facts.dest_info
    if src is None:
        return report

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

    _check_cpu(report, vm, vm_dict, destination, src, dst)
    _check_capacity(report, vm, destination, dst)
    _check_networks(report, vm, source, destination, src, dst)
    _check_name_free(report, vm, destination)
    _check_storage(report, vm, source, destination, params, judge_disk_plan)
    _check_tls(report, source, destination, params)
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
    return report


def _check_cpu(report, vm, vm_dict, destination, src, dst) -> None:
    if (src.cpu_vendor, src.cpu_model, src.arch) != (dst.cpu_vendor, dst.cpu_model, dst.arch):
        report.add(
            "CPU model",
            FAIL,
            f"Only homogeneous migration is supported: source CPU is {src.cpu_vendor} {src.cpu_model} "
            f"({src.arch}), destination is {dst.cpu_vendor} {dst.cpu_model} ({dst.arch}).",
            "R3",
        )
        return
    ok, message = _read(lambda: gateway.compare_guest_cpu(destination.connect_uri, vm_dict))
    if message is not None:
        report.add("CPU model", FAIL, f"Could not compare CPUs on {destination.name}: {message.message}", "R3")
    elif not ok[0]:
        report.add("CPU model", FAIL, f"{destination.name} cannot run this VM's CPU: {ok[1]}", "R3")
    else:
        report.add("CPU model", PASS, f"identical host CPUs ({src.cpu_vendor} {src.cpu_model}); {ok[1]}", "R3")


def _check_capacity(report, vm, destination, dst) -> None:
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
    need_mib, free_mib = vm.memory_kib // 1024, dst.memory_free_kib // 1024
    if dst.memory_free_kib < vm.memory_kib:
        report.add(
            "memory",
            FAIL,
            f"{destination.name} has {free_mib} MiB free, the VM needs {need_mib} MiB; free memory there "
            "or choose another host.",
            "R5",
        )
    else:
        report.add("memory", PASS, f"{free_mib} MiB free ≥ {need_mib} MiB needed", "R5")


def _check_networks(report, vm, source, destination, src, dst) -> None:
    """R4, one line per NIC: what the NIC is plugged into must exist on the
    destination. libvirt does not check this before migrating; a missing
    bridge or device surfaces only when the VM starts there ("Cannot get
    interface MTU on 'br0': No such device") and the migration fails."""
    if not vm.interfaces:
        report.add("networks", PASS, f"{vm.name} has no network interface: nothing to check", "R4")
        return
    for number, iface in enumerate(vm.interfaces, 1):
        label = iface.get("mac") or iface.get("target") or str(number)
        shown = f"NIC {label}" + (f" ({iface['target']})" if iface.get("mac") and iface.get("target") else "")
        status, message = _nic_verdict(iface, source.name, destination.name, src, dst)
        report.add(f"NIC {label}", status, f"{shown} {message}", "R4")
    # The VM's own networks were judged above, NIC by NIC.
    own = {i.get("source") for i in vm.interfaces if i.get("type") == "network"}
    only_src = sorted(set(src.networks) - set(dst.networks) - own)
    only_dst = sorted(set(dst.networks) - set(src.networks) - own)
    if all(i.get("type") == "user" for i in vm.interfaces) or not (only_src or only_dst):
        return
    only_src, only_dst = ", ".join(only_src) or "none", ", ".join(only_dst) or "none"
    report.add(
        "networks",
        WARN,
        f"Source and destination have different libvirt networks (only on {source.name}: {only_src}; only on "
        f"{destination.name}: {only_dst}); migrating across business network segments breaks the guest's "
        "network even though the migration succeeds.",
        "R4",
    )


_MACVTAP_FORWARDS = ("bridge", "private", "vepa", "passthrough")


def _nic_verdict(iface, src_name, dst_name, src, dst) -> tuple[str, str]:
    kind, name = iface.get("type", ""), iface.get("source", "")
    if kind == "user":
        return PASS, "uses user-mode networking (SLIRP): it needs nothing on the host"
    if kind == "network":
        return _nic_on_network(iface, src_name, dst_name, src, dst)
    if kind == "bridge":
        return _nic_on_bridge(name, iface.get("virtualport") == "openvswitch", src_name, dst_name, dst)
    if kind == "direct":
        mode = f" ({iface['mode']} mode)" if iface.get("mode") else ""
        what = f"is a macvtap device{mode} on host device {name}"
        if not dst.net_devices_known:
            return WARN, f"{what}; {dst_name} could not list its network devices: make sure {name} exists there."
        if name not in dst.net_devices:
            return FAIL, (
                f"{what}, which does not exist on {dst_name}: the VM would fail to start there. Give {dst_name} "
                f"the same uplink under the name {name}, or choose a destination that has it."
            )
        return PASS, f"{what}, which exists on {dst_name}"
    if kind == "hostdev":
        return WARN, (
            "is an assigned host device (PCI passthrough, SR-IOV): libvirt live-migrates it only if the device "
            "supports VFIO migration; detach it before migrating."
        )
    return WARN, (
        f"is of type {kind or 'unknown'}, which this pre-check cannot verify: make sure what it needs "
        f"(tap device, socket) exists on {dst_name}."
    )


def _nic_on_bridge(name, ovs, src_name, dst_name, dst) -> tuple[str, str]:
    what = f"{'Open vSwitch bridge' if ovs else 'bridge'} {name}"
    if not dst.net_devices_known:
        return WARN, (
            f"is on {what}; {dst_name} could not list its network devices: make sure {name} exists there, or "
            "the VM fails to start."
        )
    if name not in dst.net_devices and name not in dst.bridges:
        if ovs:
            consequence, create = "", f"ovs-vsctl add-br {name}"
        else:
            consequence = f" (\"Cannot get interface MTU on '{name}': No such device\")"
            create = f"ip link add {name} type bridge"
        return FAIL, (
            f"is on {what}, which does not exist on {dst_name}: the VM would fail to start there{consequence}. "
            f"Create {what} on {dst_name} ({create}, on the same network as on {src_name}), or choose a "
            "destination that has it."
        )
    if not ovs and dst.bridges_known and name not in dst.bridges:
        return WARN, (
            f"is on Linux bridge {name}; on {dst_name}, {name} is not a Linux bridge (an Open vSwitch bridge or "
            "a plain device): check that it is the same network there, or the VM may fail to start."
        )
    return PASS, f"is on {what}, which exists on {dst_name}"


def _describe_network(net) -> str:
    if net.virtualport == "openvswitch":
        return f"Open vSwitch bridge {net.bridge}" if net.bridge else "Open vSwitch"
    if net.forward == "bridge" and net.bridge:
        return f"bridged to {net.bridge}"
    if net.forward in _MACVTAP_FORWARDS:
        return f"macvtap ({net.forward}) on {', '.join(net.devices) or 'no device'}"
    return net.forward or "isolated"


def _nic_on_network(iface, src_name, dst_name, src, dst) -> tuple[str, str]:
    name, portgroup = iface.get("source", ""), iface.get("portgroup", "")
    what = f"is on libvirt network {name}" + (f", port group {portgroup}" if portgroup else "")
    if name not in dst.networks:
        return FAIL, (
            f"{what}, and {dst_name} has no network {name}: the VM would fail to start there. Define it on "
            f"{dst_name} like the one on {src_name} (virsh net-dumpxml {name} there; virsh net-define, net-start "
            f"and net-autostart on {dst_name}), or choose another destination."
        )
    net = dst.network_details.get(name)
    if net is None:
        return PASS, f"{what}, which exists on {dst_name}"
    if not net.active:
        return FAIL, (
            f"{what}; network {name} is defined on {dst_name} but not active: the VM would fail to start there. "
            f"Start it (virsh net-start {name}; virsh net-autostart {name} keeps it up) and check again."
        )
    if portgroup and portgroup not in net.portgroups:
        others = ", ".join(net.portgroups) or "none"
        return FAIL, (
            f"{what}; network {name} on {dst_name} has no port group {portgroup} (it has: {others}): the VM would "
            f"fail to start there. Add port group {portgroup} to network {name} on {dst_name} (virsh net-edit "
            f"{name}), or choose another destination."
        )
    uplinks = [net.bridge] if net.forward == "bridge" and net.bridge else []
    if net.forward in _MACVTAP_FORWARDS and not net.bridge:
        uplinks = net.devices
    if uplinks and dst.net_devices_known and not set(uplinks) & set(dst.net_devices):
        return FAIL, (
            f"{what}; on {dst_name} that network uses {', '.join(uplinks)}, which does not exist there: the VM "
            f"would fail to start. Create {uplinks[0]} on {dst_name}, or point network {name} there at a device "
            "it has."
        )
    if net.forward == "hostdev":
        return WARN, (
            f"{what}; on {dst_name} that network assigns host devices (SR-IOV): libvirt live-migrates them only "
            "if the device supports VFIO migration."
        )
    mine = src.network_details.get(name)
    if mine is not None and _describe_network(mine) != _describe_network(net):
        return WARN, (
            f"{what}, which is {_describe_network(mine)} on {src_name} but {_describe_network(net)} on "
            f"{dst_name}: the guest may land on another network segment."
        )
    return PASS, f"{what}, which is active on {dst_name} ({_describe_network(net)})"


def _check_name_free(report, vm, destination) -> None:
    by_uuid, error = _read(lambda: gateway.find_vm(destination.connect_uri, uuid=vm.uuid))
    by_name, error2 = _read(lambda: gateway.find_vm(destination.connect_uri, name=vm.name))
    if error or error2:
        report.add("name free", FAIL, f"Could not list VMs on {destination.name}: {(error or error2).message}")
    elif by_uuid or by_name:
        found = by_uuid or by_name
        report.add(
            "name free",
            FAIL,
            f"{destination.name} already has a VM named {found.name} (UUID {found.uuid}, {found.state}); "
            "remove or rename it there first.",
        )
    else:
        report.add("name free", PASS, f"no VM of that name or UUID on {destination.name}")


def _check_storage(report, vm, source, destination, params, judge_disk_plan: bool) -> None:
    verdicts = {v.target: v for v in disk_verdicts(vm.disks, source.prefixes)}
    if vm.storage_class == StorageClass.SHARED:
        report.add("storage class", PASS, "every disk is on shared storage: nothing is copied", "R7")
    else:
        report.add("storage class", PASS, "local disks: they are copied to the destination", "R7")

    chosen = {d["target"] for d in chosen_disks(vm, params)}
    for disk in vm.disks:
        verdict = verdicts[disk["target"]]
        if not verdict.data:
            continue
        target = disk["target"]
        if target in chosen and not verdict.migratable:
            report.add(f"disk {target}", FAIL, f"{target} cannot be copied: {verdict.reason}.", "R6")
        elif verdict.kind == "network":
            report.add(f"disk {target}", PASS, f"{target} is network storage, reached by both hosts", "R7")
        elif verdict.shared:
            _check_shared_disk(report, disk, destination)
        elif target in chosen:
            _check_copied_disk(report, disk, destination, params)
        else:
            _check_kept_disk(report, disk, verdict, destination)

    if vm.storage_class == StorageClass.NON_SHARED and judge_disk_plan and not chosen:
        report.add(
            "disks to copy",
            FAIL,
            "This VM has local disks but none is selected for copying; select the local disks to migrate.",
            "R13",
        )
    if chosen:
        _check_space(report, vm, destination, params)


def _check_shared_disk(report, disk, destination) -> None:
    target, path = disk["target"], disk["source"]
    info, error = _read(lambda: gateway.path_info(destination.connect_uri, path))
    if error or not info.exists:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} is not visible on {destination.name}: mount the shared storage there at the "
            "same path, or add its path to that host's shared prefixes if it is already there.",
            "R7",
        )
    else:
        report.add(f"disk {target}", PASS, f"{path} is visible at the same path on {destination.name}", "R7")


def _inspect(report, disk, destination) -> gateway.PathInfo | None:
    """The destination's view of the disk's path; None (with a failed check)
    when it cannot be read or is a block device."""
    target, path = disk["target"], disk["source"]
    info, error = _read(lambda: gateway.path_info(destination.connect_uri, path))
    if error:
        report.add(f"disk {target}", FAIL, f"Could not inspect {path} on {destination.name}: {error.message}", "R6")
        return None
    if info.is_block_device:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} is a block device on {destination.name}; the destination image must be a file.",
            "R6",
        )
        return None
    return info


def _check_copied_disk(report, disk, destination, params) -> None:
    target, path = disk["target"], disk["source"]
    info = _inspect(report, disk, destination)
    if info is None:
        return
    fmt = disk.get("format") or "raw"
    if not params.create_images:
        if info.exists:
            report.add(f"disk {target}", PASS, f"{path} exists on {destination.name} and is copied into", "R6")
        else:
            report.add(
                f"disk {target}",
                FAIL,
                f"{path} does not exist on {destination.name} and 'Create destination images' is off; tick it, "
                f"or create the image there first (qemu-img create -f {fmt} {path} SIZE).",
                "R6",
            )
        return
    if info.exists and info.used_by:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} already exists on {destination.name} and is a disk of {', '.join(info.used_by)} there; it is "
            "never replaced. Move that VM's disk, or migrate to another host.",
            "R6",
        )
    elif info.exists:
        stale = (
            f"{path} already exists on {destination.name} and no VM there uses it: a stale copy of this disk, "
            "left by an earlier migration or by hand."
        )
        decision = params.replace_stale_images
        if decision:
            report.add(f"disk {target}", PASS, f"{stale} It is deleted, created afresh and copied.", "R6")
        elif decision is None:
            report.add(f"disk {target}", WARN, f"{stale} The next step asks whether to replace it.", "R6")
        else:
            report.add(
                f"disk {target}",
                FAIL,
                f"{stale} Tick 'Replace stale images on the destination' to delete it and copy afresh, or untick "
                "'Create destination images' to copy into it as it is.",
                "R6",
            )
    elif not info.pool:
        report.add(
            f"disk {target}",
            FAIL,
            f"No libvirt storage pool on {destination.name} covers {path.rpartition('/')[0]}; define a 'dir' "
            "pool there so the image can be created.",
            "R6",
        )
    else:
        size = f", {disk['capacity_bytes'] // 2**20} MiB" if disk.get("capacity_bytes") else ""
        report.add(f"disk {target}", PASS, f"{path} ({fmt}{size}) is created and copied on {destination.name}", "R6")


def _check_kept_disk(report, disk, verdict, destination) -> None:
    """A local disk that is not copied: the destination must have its own."""
    target, path = disk["target"], disk["source"]
    info = _inspect(report, disk, destination)
    if info is None:
        return
    if info.exists:
        report.add(f"disk {target}", PASS, f"{path} exists on {destination.name} and is used there as it is", "R6")
        return
    if verdict.migratable:
        fix = "select it under 'Disks to copy'"
    else:
        fix = f"{verdict.reason}; create it there (qemu-img create -f {disk.get('format') or 'raw'} {path} SIZE)"
    report.add(
        f"disk {target}",
        FAIL,
        f"{target} is not copied and {path} does not exist on {destination.name}: {fix}.",
        "R6",
    )


def _check_space(report, vm, destination, params) -> None:
    need = sum(d.get("capacity_bytes") or 0 for d in chosen_disks(vm, params))
    free = None
    for disk in chosen_disks(vm, params):
        info, error = _read(lambda p=disk["source"]: gateway.path_info(destination.connect_uri, p))
        if info is not None and info.pool_available_bytes is not None:
            free = info.pool_available_bytes
            break
    if free is None:
        report.add("disk space", WARN, f"Could not read free space on {destination.name}.", "R5")
    elif free < need:
        report.add(
            "disk space",
            FAIL,
            f"{destination.name} has {free // 2**20} MiB free for {need // 2**20} MiB of images; free space there.",
            "R5",
        )
    else:
        report.add("disk space", PASS, f"{free // 2**20} MiB free ≥ {need // 2**20} MiB of images", "R5")


def _check_tls(report, source, destination, params) -> None:
    if not params.tls:
        return
    for status, message in tls_readiness(source, destination):
        report.add("TLS", status, message, "R14")
