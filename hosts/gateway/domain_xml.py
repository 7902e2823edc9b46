"""What the dashboard reads from a domain's XML. Plain parsing: no libvirt,
so the same rules serve stored XML and tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DiskInfo:
    target: str
    device: str  # disk, cdrom, lun, floppy
    type: str  # file, block, network, volume, dir
    source: str
    format: str
    bus: str
    capacity_bytes: int | None  # libvirt's numbers, not the XML's: None in a ParsedDomain
    allocation_bytes: int | None
    shareable: bool
    readonly: bool
    protocol: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InterfaceInfo:
    type: str  # network, bridge, user, direct, ...
    source: str  # network, bridge or host device name
    mac: str
    model: str
    target: str = ""  # the host-side device while the VM runs (vnet0, macvtap0)
    portgroup: str = ""
    virtualport: str = ""  # openvswitch, 802.1Qbh, ...; "" for a plain Linux bridge
    mode: str = ""  # macvtap mode of a direct NIC: vepa, bridge, private, passthrough

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ParsedDomain:
    """Everything the dashboard needs from a domain's XML."""

    domain_type: str
    arch: str
    machine: str
    emulator: str
    disks: tuple[DiskInfo, ...]
    interfaces: tuple[InterfaceInfo, ...]
    hugepages: bool
    cpu_xml: str
    emulator_pin: str


def _disk(disk: ET.Element) -> DiskInfo:
    source = disk.find("source")
    disk_type = disk.get("type", "file")
    protocol = ""
    source_text = ""
    if source is not None:
        if disk_type == "network":
            protocol = source.get("protocol", "")
            host = source.find("host")
            where = host.get("name", "") if host is not None else ""
            source_text = f"{protocol}://{where}/{source.get('name', '')}"
        elif disk_type == "volume":
            source_text = f"{source.get('pool', '')}/{source.get('volume', '')}"
        else:
            source_text = source.get("file") or source.get("dev") or source.get("dir") or ""
    driver = disk.find("driver")
    target = disk.find("target")
    return DiskInfo(
        target=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        device=disk.get("device", "disk"),
        type=disk_type,
        source=source_text,
        protocol=protocol,
        format=driver.get("type", "") if driver is not None else "",
        capacity_bytes=None,
        allocation_bytes=None,
        shareable=disk.find("shareable") is not None,
        readonly=disk.find("readonly") is not None,
    )


def _interface(iface: ET.Element) -> InterfaceInfo:
    source = iface.find("source")
    mac = iface.find("mac")
    model = iface.find("model")
    target = iface.find("target")
    virtualport = iface.find("virtualport")
    src = ""
    if source is not None:
        # A running VM's network NIC also names the network's bridge: the network comes first.
        src = source.get("network") or source.get("bridge") or source.get("dev") or ""
    return InterfaceInfo(
        type=iface.get("type", ""),
        source=src,
        mac=mac.get("address", "") if mac is not None else "",
        model=model.get("type", "") if model is not None else "",
        target=target.get("dev", "") if target is not None else "",
        portgroup=source.get("portgroup", "") if source is not None else "",
        virtualport=virtualport.get("type", "") if virtualport is not None else "",
        mode=source.get("mode", "") if source is not None and iface.get("type") == "direct" else "",
    )


def parse_domain_xml(xml: str) -> ParsedDomain:
    root = ET.fromstring(xml)
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    pin = root.find("cputune/emulatorpin")
    return ParsedDomain(
        domain_type=root.get("type", ""),
        arch=os_type.get("arch", "") if os_type is not None else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        emulator=root.findtext("devices/emulator", ""),
        disks=tuple(_disk(disk) for disk in root.findall("devices/disk")),
        interfaces=tuple(_interface(iface) for iface in root.findall("devices/interface")),
        hugepages=root.find("memoryBacking/hugepages") is not None,
        cpu_xml=ET.tostring(cpu, encoding="unicode") if cpu is not None else "",
        emulator_pin=pin.get("cpuset", "") if pin is not None else "",
    )


def disk_files(xml: str) -> list[str | None]:
    """The file or device behind each disk, as the domain names it (None for
    a disk with neither, a network disk say)."""
    root = ET.fromstring(xml)
    return [s.get("file") or s.get("dev") for s in root.iterfind("devices/disk/source")]
