"""R4: every NIC of the VM checked against the destination's bridges,
devices, Open vSwitch bridges, libvirt networks and port groups."""

from __future__ import annotations

from .report import FAIL, PASS, WARN


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
