"""What a host offers and what it measures: capabilities, networks and
network devices, CPU compatibility, migration features, a VM's dirty rate."""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from .connections import call, current_settings, open_connection
from .constants import SUPPORTS_MIGRATION_PIN_PARAM, ErrorCode
from .errors import GatewayError


@dataclass(frozen=True)
class NetworkInfo:
    """A libvirt network, as far as a guest's NIC depends on it."""

    name: str
    active: bool
    forward: str  # nat, route, open, bridge, private, vepa, passthrough, hostdev; "" when isolated
    bridge: str  # the host bridge its NICs are plugged into; "" for macvtap and hostdev networks
    devices: list[str] = field(default_factory=list)  # host devices a macvtap network draws from
    portgroups: list[str] = field(default_factory=list)
    virtualport: str = ""  # openvswitch, 802.1Qbh, ...; "" for a plain Linux bridge


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    driver: str
    libvirt_version: str
    hypervisor_version: str
    host_uuid: str
    arch: str
    cpu_vendor: str
    cpu_model: str
    cpu_sockets: int
    cpu_cores_per_socket: int
    cpu_threads_per_core: int
    numa_nodes: int
    physical_cores: int
    logical_cpus: int
    memory_total_kib: int
    memory_free_kib: int
    networks: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)  # Linux bridges
    cpu_xml: str = ""
    kvm: bool | None = None  # hardware virtualisation usable (None: not a QEMU host)
    network_details: dict[str, NetworkInfo] = field(default_factory=dict)
    net_devices: list[str] = field(default_factory=list)  # every network device: NICs, bridges, bonds, OVS
    # False when libvirt could not say: a missing name then proves nothing.
    net_devices_known: bool = False
    bridges_known: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version_str(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def _memory_kib(conn: libvirt.virConnect) -> tuple[int, int]:
    # getInfo()/getFreeMemory() can report NUMA node 0 only; the all-cells
    # statistics give the real totals where the driver has them.
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        return int(stats["total"]), int(stats["free"])
    except (libvirt.libvirtError, KeyError):
        pass
    info = conn.getInfo()
    total_kib = int(info[1]) * 1024
    try:
        free_kib = int(conn.getFreeMemory()) // 1024
    except libvirt.libvirtError:
        free_kib = total_kib
    return total_kib, free_kib


def host_info(uri: str) -> HostInfo:
    return call(uri, _host_info)


def _host_info(conn: libvirt.virConnect) -> HostInfo:
    caps = ET.fromstring(conn.getCapabilities())
    info = conn.getInfo()  # [model, MiB, cpus, MHz, nodes, sockets, cores, threads]
    cpu = caps.find("host/cpu")
    topology = cpu.find("topology") if cpu is not None else None
    nodes, sockets, cores, threads = int(info[4]), int(info[5]), int(info[6]), int(info[7])
    if topology is not None:
        sockets = int(topology.get("sockets", sockets))
        cores = int(topology.get("cores", cores))
        threads = int(topology.get("threads", threads))
    cells = caps.findall("host/topology/cells/cell")
    nodes = len(cells) or nodes
    total_kib, free_kib = _memory_kib(conn)
    try:
        hv_version = _version_str(conn.getVersion())
    except libvirt.libvirtError:
        hv_version = ""
    network_details = _networks(conn)
    net_devices, bridges, net_devices_known, bridges_known = _net_devices(conn)
    kvm = None
    if conn.getType().upper() == "QEMU":
        try:
            conn.getDomainCapabilities(None, caps.findtext("host/cpu/arch") or None, None, "kvm", 0)
            kvm = True
        except libvirt.libvirtError:
            kvm = False
    # getInfo() counts sockets per NUMA node: nodes * sockets * cores is
    # libvirt's documented count of physical cores.
    physical = int(info[4]) * int(info[5]) * int(info[6])
    return HostInfo(
        hostname=conn.getHostname(),
        driver=conn.getType(),
        libvirt_version=_version_str(conn.getLibVersion()),
        hypervisor_version=hv_version,
        host_uuid=caps.findtext("host/uuid", ""),
        arch=caps.findtext("host/cpu/arch", ""),
        cpu_vendor=caps.findtext("host/cpu/vendor", ""),
        cpu_model=caps.findtext("host/cpu/model", "") or str(info[0]),
        cpu_sockets=sockets,
        cpu_cores_per_socket=cores,
        cpu_threads_per_core=threads,
        numa_nodes=nodes,
        physical_cores=physical,
        logical_cpus=int(info[2]),
        memory_total_kib=total_kib,
        memory_free_kib=free_kib,
        networks=sorted(network_details),
        bridges=bridges,
        cpu_xml=ET.tostring(cpu, encoding="unicode") if cpu is not None else "",
        kvm=kvm,
        network_details=network_details,
        net_devices=net_devices,
        net_devices_known=net_devices_known,
        bridges_known=bridges_known,
    )


def _network_info(net: libvirt.virNetwork) -> NetworkInfo:
    root = ET.fromstring(net.XMLDesc(0))
    forward = root.find("forward")
    devices = []
    if forward is not None:
        devices = [e.get("dev", "") for e in (*forward.findall("pf"), *forward.findall("interface"))]
        devices = [d for d in dict.fromkeys(devices) if d]
    bridge = root.find("bridge")
    virtualport = root.find("virtualport")
    return NetworkInfo(
        name=net.name(),
        active=bool(net.isActive()),
        forward=forward.get("mode", "nat") if forward is not None else "",
        bridge=bridge.get("name", "") if bridge is not None else "",
        devices=devices,
        portgroups=sorted(p.get("name", "") for p in root.findall("portgroup") if p.get("name")),
        virtualport=virtualport.get("type", "") if virtualport is not None else "",
    )


def _networks(conn: libvirt.virConnect) -> dict[str, NetworkInfo]:
    try:
        nets = conn.listAllNetworks(0)
    except libvirt.libvirtError:
        return {}
    details = {}
    for net in nets:
        # A network undefined between the listing and the read is simply gone.
        with contextlib.suppress(libvirt.libvirtError):
            details[net.name()] = _network_info(net)
    return dict(sorted(details.items()))


def _net_devices(conn: libvirt.virConnect) -> tuple[list[str], list[str], bool, bool]:
    """(every network device, the Linux bridges among them, whether devices
    could be listed, whether bridges could be told apart).

    The interface driver reads the kernel's current devices but needs a
    backend (udev or netcf); node devices need no backend, but libvirtd
    learns of devices added later only through udev events, which a daemon
    in another network namespace never receives. Either one is enough to
    see that a device exists; only the interface driver tells a bridge."""
    devices: set[str] = set()
    bridges: set[str] = set()
    devices_known = bridges_known = False
    try:
        for iface in conn.listAllInterfaces(0):
            with contextlib.suppress(libvirt.libvirtError, ET.ParseError):
                name = iface.name()
                devices.add(name)
                if ET.fromstring(iface.XMLDesc(0)).get("type") == "bridge":
                    bridges.add(name)
        devices_known = bridges_known = True
    except libvirt.libvirtError:
        pass
    try:
        for dev in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET):
            with contextlib.suppress(libvirt.libvirtError, ET.ParseError):
                name = ET.fromstring(dev.XMLDesc(0)).findtext("capability/interface", "")
                if name:
                    devices.add(name)
        devices_known = True
    except libvirt.libvirtError:
        pass
    return sorted(devices), sorted(bridges), devices_known, bridges_known


def warm(uri: str, *, emulator: str | None = None, arch: str | None = None, virttype: str | None = None) -> None:
    """Have a fresh daemon probe QEMU now (~3.7 s per binary) rather than
    inside the first start or migration. Host capabilities probe every binary
    installed; domain capabilities the one named. A connection of its own:
    a pooled one may predate a restart of the daemon."""
    conn = open_connection(uri)
    try:
        conn.getCapabilities()
        conn.getDomainCapabilities(emulator, arch, None, virttype, 0)
    except libvirt.libvirtError as exc:
        raise GatewayError.from_libvirt(exc, uri) from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


@dataclass(frozen=True)
class CpuVerdict:
    """Whether the destination can run the VM's CPU (R3), and why."""

    compatible: bool
    reason: str


def compare_guest_cpu(uri: str, vm: dict[str, Any]) -> CpuVerdict:
    """Whether the destination can run the VM's CPU (R3).

    compareHypervisorCPU with the domain's own virt type answers correctly
    under TCG, where the plain compareCPU wrongly reports incompatibility.
    """
    cpu_xml = vm.get("cpu_xml") or ""
    if not cpu_xml or "host-passthrough" in cpu_xml or "host-model" in cpu_xml:
        return CpuVerdict(True, "the VM takes its CPU from the host; host CPU models are compared instead")

    def compare(conn: libvirt.virConnect) -> CpuVerdict:
        try:
            result = conn.compareHypervisorCPU(
                vm.get("emulator") or None,
                vm.get("arch") or None,
                vm.get("machine") or None,
                vm.get("domain_type") or None,
                cpu_xml,
                0,
            )
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.CPU_INCOMPATIBLE:
                return CpuVerdict(False, exc.get_error_message())
            raise
        if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            return CpuVerdict(False, "the destination's CPU does not provide the VM's CPU model")
        return CpuVerdict(True, "the destination accepts the VM's CPU model")

    return call(uri, compare)


@dataclass(frozen=True)
class MigrationFeatures:
    compression_methods: list[str]
    migration_pin: bool  # openEuler's `migration.pin` typed parameter
    postcopy: bool
    parallel: bool
    max_speed_mib_s: int | None  # what migrate-getspeed reads back
    max_downtime_ms: int | None
    libvirt_version: int
    qemu_version: int


def migration_features(uri: str, uuid: str | None = None) -> MigrationFeatures:
    """What the host's libvirt/QEMU offers for migration. libvirt has no query
    for this, so it is derived from versions measured against the releases:
    multifd zlib/zstd need libvirt >= 9.4; QEMU 9.1 removed 'mt'."""
    return call(uri, lambda conn: _migration_features(conn, uuid))


def _migration_features(conn: libvirt.virConnect, uuid: str | None) -> MigrationFeatures:
    lib = conn.getLibVersion()
    try:
        qemu = conn.getVersion()
    except libvirt.libvirtError:
        qemu = 0
    methods = ["xbzrle"]
    if qemu and qemu < 9001000:
        methods.append("mt")
    if lib >= 9004000:
        methods += ["zlib", "zstd"]
    speed = downtime = None
    if uuid:
        try:
            dom = conn.lookupByUUIDString(uuid)
            speed = dom.migrateGetMaxSpeed(0)
            downtime = dom.migrateGetMaxDowntime(0)
        except (libvirt.libvirtError, AttributeError):
            pass
    return MigrationFeatures(
        compression_methods=methods,
        migration_pin=SUPPORTS_MIGRATION_PIN_PARAM,
        postcopy=True,
        parallel=lib >= 5002000,
        max_speed_mib_s=speed,
        max_downtime_ms=downtime,
        libvirt_version=lib,
        qemu_version=qemu,
    )


# How long QEMU may take to report a reading after its window ends.
DIRTY_RATE_REPORT_WAIT_S = 10


@dataclass(frozen=True)
class DirtyRate:
    """One reading of QEMU's page-sampling dirty-rate calculation."""

    dirty_rate_mib_s: float
    window_s: int
    mode: str
    sample_pages: int | None


def dirty_rate(uri: str, uuid: str, window_s: int) -> DirtyRate:
    """Measure the VM's dirty page rate (R8) with QEMU's page sampling; other
    modes crash QEMU 7.2 under TCG. Bounded by the window, the wait for QEMU
    to report, and one call bound for the round trips."""
    bound = window_s + DIRTY_RATE_REPORT_WAIT_S + current_settings().call_timeout_s
    return call(uri, lambda conn: _dirty_rate(conn, uri, uuid, window_s), bound)


def _dirty_rate(conn: libvirt.virConnect, uri: str, uuid: str, window_s: int) -> DirtyRate:
    dom = conn.lookupByUUIDString(uuid)
    dom.startDirtyRateCalc(window_s, 0)
    deadline = time.monotonic() + window_s + DIRTY_RATE_REPORT_WAIT_S
    time.sleep(window_s)
    while True:
        stats = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1]
        status = stats.get("dirtyrate.calc_status")
        if status == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status != libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
        raise GatewayError("The dirty-rate measurement did not finish in time.", uri=uri)
    return DirtyRate(
        dirty_rate_mib_s=float(stats.get("dirtyrate.megabytes_per_second", 0)),
        window_s=int(stats.get("dirtyrate.calc_period", window_s)),
        mode="page-sampling",
        sample_pages=stats.get("dirtyrate.calc_sample_pages"),
    )
