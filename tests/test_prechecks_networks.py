"""R4 for every kind of NIC (`_check_networks`), on made-up host facts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hosts import gateway
from migrator.prechecks import FAIL, PASS, WARN, Report
from migrator.prechecks.network import _check_networks

SOURCE, DESTINATION = SimpleNamespace(name="lab-a"), SimpleNamespace(name="lab-b")


def host(networks=(), devices=(), bridges=(), known=True) -> gateway.HostInfo:
    details = {n.name: n for n in networks}
    return gateway.HostInfo(
        hostname="h",
        driver="QEMU",
        libvirt_version="9.0.0",
        hypervisor_version="7.2.0",
        host_uuid="",
        arch="x86_64",
        cpu_vendor="Intel",
        cpu_model="kvm64",
        cpu_sockets=1,
        cpu_cores_per_socket=2,
        cpu_threads_per_core=1,
        numa_nodes=1,
        physical_cores=2,
        logical_cpus=2,
        memory_total_kib=2**20,
        memory_free_kib=2**20,
        networks=sorted(details),
        bridges=sorted(bridges),
        network_details=details,
        net_devices=sorted({*devices, *bridges}),
        net_devices_known=known,
        bridges_known=known,
    )


def net(name, active=True, forward="nat", bridge="virbr0", devices=(), portgroups=(), virtualport=""):
    return gateway.NetworkInfo(name, active, forward, bridge, list(devices), list(portgroups), virtualport)


def nic(type_, source="", mac="52:54:00:00:00:01", target="vnet0", **extra) -> dict:
    return {"type": type_, "source": source, "mac": mac, "model": "virtio", "target": target, **extra}


def check(interfaces, src, dst) -> Report:
    report = Report()
    vm = SimpleNamespace(name="web", interfaces=interfaces)
    _check_networks(report, vm, SOURCE, DESTINATION, src, dst)
    return report


def only(report: Report):
    assert len(report.checks) == 1, report.checks
    return report.checks[0]


def test_a_bridge_missing_on_the_destination_fails_naming_nic_and_bridge():
    src = host(devices=["eth0"], bridges=["br0"])
    dst = host(devices=["eth0"])
    c = only(check([nic("bridge", "br0")], src, dst))
    assert c.status == FAIL and c.name == "NIC 52:54:00:00:00:01" and c.requirement == "R4"
    assert c.message.startswith("NIC 52:54:00:00:00:01 (vnet0) is on bridge br0, which does not exist on lab-b")
    assert "Cannot get interface MTU on 'br0'" in c.message
    assert "Create bridge br0 on lab-b (ip link add br0 type bridge" in c.message


def test_a_bridge_present_on_the_destination_passes():
    c = only(check([nic("bridge", "br0")], host(bridges=["br0"]), host(bridges=["br0"])))
    assert c.status == PASS and "br0, which exists on lab-b" in c.message


def test_a_device_that_is_not_a_linux_bridge_warns():
    c = only(check([nic("bridge", "br0")], host(bridges=["br0"]), host(devices=["br0"])))
    assert c.status == WARN and "not a Linux bridge" in c.message


def test_unknown_devices_warn_instead_of_failing():
    c = only(check([nic("bridge", "br0")], host(bridges=["br0"]), host(known=False)))
    assert c.status == WARN and "could not list its network devices" in c.message


def test_a_missing_direct_device_fails_and_a_present_one_passes():
    iface = nic("direct", "eth1", target="macvtap0", mode="vepa")
    c = only(check([iface], host(devices=["eth1"]), host(devices=["eth0"])))
    assert c.status == FAIL
    assert c.message.startswith("NIC 52:54:00:00:00:01 (macvtap0) is a macvtap device (vepa mode) on host device eth1")
    assert "does not exist on lab-b" in c.message
    assert only(check([iface], host(devices=["eth1"]), host(devices=["eth1"]))).status == PASS


def test_an_open_vswitch_port_needs_the_ovs_bridge():
    iface = nic("bridge", "ovsbr0", virtualport="openvswitch")
    c = only(check([iface], host(devices=["ovsbr0"]), host()))
    assert c.status == FAIL and "Open vSwitch bridge ovsbr0, which does not exist on lab-b" in c.message
    assert "ovs-vsctl add-br ovsbr0" in c.message
    # OVS bridges are not Linux bridges: a device of that name is what counts.
    assert only(check([iface], host(devices=["ovsbr0"]), host(devices=["ovsbr0"]))).status == PASS


def test_a_missing_or_inactive_network_fails():
    iface = nic("network", "prod")
    c = only(check([iface], host([net("prod")]), host()))
    assert c.status == FAIL and "lab-b has no network prod" in c.message and "virsh net-define" in c.message
    c = only(check([iface], host([net("prod")]), host([net("prod", active=False)])))
    assert c.status == FAIL and "not active" in c.message and "virsh net-start prod" in c.message
    assert only(check([iface], host([net("prod")]), host([net("prod")]))).status == PASS


def test_a_missing_port_group_fails():
    iface = nic("network", "prod", portgroup="vlan42")
    src = host([net("prod", portgroups=["vlan42"])])
    c = only(check([iface], src, host([net("prod", portgroups=["vlan7"])])))
    assert c.status == FAIL
    assert "is on libvirt network prod, port group vlan42; network prod on lab-b has no port group vlan42" in c.message
    assert "(it has: vlan7)" in c.message
    assert only(check([iface], src, host([net("prod", portgroups=["vlan7", "vlan42"])]))).status == PASS


def test_a_network_whose_bridge_or_uplink_is_missing_fails():
    bridged = net("lan", forward="bridge", bridge="br0")
    c = only(check([nic("network", "lan")], host([bridged], bridges=["br0"]), host([bridged])))
    assert c.status == FAIL and "uses br0, which does not exist there" in c.message
    macvtap = net("lan", forward="vepa", bridge="", devices=["eth1", "eth2"])
    assert only(check([nic("network", "lan")], host([macvtap]), host([macvtap], devices=["eth0"]))).status == FAIL
    assert only(check([nic("network", "lan")], host([macvtap]), host([macvtap], devices=["eth2"]))).status == PASS


def test_a_network_of_another_kind_warns():
    c = only(check([nic("network", "lan")], host([net("lan")]), host([net("lan", forward="route")])))
    assert c.status == WARN and "nat on lab-a but route on lab-b" in c.message


@pytest.mark.parametrize("interfaces", [[], [nic("user", target="")]])
def test_user_mode_and_no_nic_pass_even_with_other_networks(interfaces):
    report = check(interfaces, host([net("default")]), host([net("other")]))
    assert report.ok and not report.warnings, report.checks


def test_different_network_sets_still_warn_for_a_vm_on_host_networking():
    report = check([nic("bridge", "br0")], host([net("default")], bridges=["br0"]), host(bridges=["br0"]))
    assert report.ok
    assert [c.name for c in report.warnings] == ["networks"]
    assert "only on lab-a: default" in report.warnings[0].message


def test_one_line_per_nic_each_named():
    interfaces = [nic("user", mac="52:54:00:00:00:0a", target=""), nic("bridge", "br9", mac="52:54:00:00:00:0b")]
    report = check(interfaces, host(bridges=["br9"]), host())
    assert [(c.name, c.status) for c in report.checks] == [
        ("NIC 52:54:00:00:00:0a", PASS),
        ("NIC 52:54:00:00:00:0b", FAIL),
    ]
    assert report.verdict == "blocked" and "br9" in report.summary()


NICS_XML = """
<domain type='kvm'><name>n</name><devices>
  <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet3'/></interface>
  <interface type='bridge'><source bridge='ovsbr0'/><virtualport type='openvswitch'/></interface>
  <interface type='direct'><source dev='eth1' mode='vepa'/></interface>
  <interface type='network'><source network='prod' portgroup='vlan42' bridge='virbr1'/></interface>
  <interface type='user'/>
</devices></domain>
"""


def test_the_gateway_reads_what_each_nic_is_plugged_into():
    nics = gateway.parse_domain_xml(NICS_XML).interfaces
    assert [(i.type, i.source, i.target, i.portgroup, i.virtualport, i.mode) for i in nics] == [
        ("bridge", "br0", "vnet3", "", "", ""),
        ("bridge", "ovsbr0", "", "", "openvswitch", ""),
        ("direct", "eth1", "", "", "", "vepa"),
        ("network", "prod", "", "vlan42", "", ""),
        ("user", "", "", "", "", ""),
    ]


def test_the_gateway_reads_networks_and_devices_of_a_host():
    info = gateway.host_info("test:///default")
    assert info.networks == ["default"]
    assert info.network_details["default"] == net("default", forward="nat", bridge="virbr0")
    assert info.net_devices_known and "eth1" in info.net_devices
    assert info.as_dict()["network_details"]["default"]["active"] is True
