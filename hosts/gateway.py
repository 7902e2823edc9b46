"""The one place that talks to libvirt.

Views, forms and jobs call these functions and get plain dataclasses back;
every libvirt failure becomes a `GatewayError` carrying libvirt's code, domain
and message. Connections are opened with a timeout (a dead host must not hang
a page or a job), reused per process, and dropped as soon as they fail.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

# libvirt prints every error to stderr unless a handler is registered; errors
# reach callers as GatewayError instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
RUNNING_STATES = ("running", "blocked")

# Plain-words advice for the libvirt error codes operators meet most.
ERROR_HINTS = {
    libvirt.VIR_ERR_NO_DOMAIN: "The VM is not on that host (any more). Refresh the inventory.",
    libvirt.VIR_ERR_OPERATION_INVALID: "The VM is not in a state that allows this; check that it is running.",
    libvirt.VIR_ERR_OPERATION_ABORTED: "The migration was aborted; the VM keeps running on the source.",
    libvirt.VIR_ERR_OPERATION_TIMEOUT: "libvirt timed out waiting for the job; check the host's load and network.",
    libvirt.VIR_ERR_SYSTEM_ERROR: "A system call failed on the host; the message names the file or socket.",
    libvirt.VIR_ERR_AUTH_FAILED: "Authentication to the host failed; check SSH keys or TLS certificates.",
    libvirt.VIR_ERR_NO_SUPPORT: "The host's libvirt or QEMU does not support this; choose other parameters.",
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: "The host's libvirt does not support one of the parameters.",
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: "The host's libvirt or QEMU does not support this operation.",
    libvirt.VIR_ERR_CPU_INCOMPATIBLE: (
        "The destination CPU cannot run this VM's CPU model; migrate between identical hosts."
    ),
    libvirt.VIR_ERR_MIGRATE_UNSAFE: (
        "libvirt does not recognise the storage as shared (it knows NFS, GFS2, OCFS2, CephFS and a few others). "
        "If the disks really are on shared storage mounted at the same path on both hosts, tick 'unsafe'."
    ),
    libvirt.VIR_ERR_OPERATION_FAILED: "The operation failed on the host; the message says why.",
    libvirt.VIR_ERR_INTERNAL_ERROR: "libvirt reported an internal error; the host's libvirtd log has details.",
}


class GatewayError(Exception):
    """A libvirt failure, with libvirt's own code, domain and message."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        domain: int | None = None,
        level: int | None = None,
        extra: dict[str, Any] | None = None,
        uri: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.domain = domain
        self.level = level
        self.extra = extra or {}
        self.uri = uri

    @classmethod
    def from_libvirt(cls, exc: libvirt.libvirtError, uri: str = "") -> GatewayError:
        err = exc.get_error_code(), exc.get_error_domain(), exc.get_error_level()
        extra = {
            "str1": exc.get_str1(),
            "str2": exc.get_str2(),
            "str3": exc.get_str3(),
            "int1": exc.get_int1(),
            "int2": exc.get_int2(),
        }
        return cls(
            exc.get_error_message() or str(exc),
            code=err[0],
            domain=err[1],
            level=err[2],
            extra={k: v for k, v in extra.items() if v not in (None, "", -1)},
            uri=uri,
        )

    @property
    def hint(self) -> str:
        return ERROR_HINTS.get(self.code, "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "code": self.code,
            "domain": self.domain,
            "level": self.level,
            "extra": self.extra,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        return self.message


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


@dataclass(frozen=True)
class DiskInfo:
    target: str
    device: str  # disk, cdrom, lun, floppy
    type: str  # file, block, network, volume, dir
    source: str
    format: str
    bus: str
    capacity_bytes: int | None
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
class VMInfo:
    name: str
    uuid: str
    state: str
    vcpus: int
    memory_kib: int
    persistent: bool
    domain_type: str
    arch: str
    machine: str
    emulator: str
    disks: list[DiskInfo]
    interfaces: list[InterfaceInfo]
    hugepages: bool
    cpu_xml: str
    emulator_pin: str

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------- connections

_pool: dict[tuple[int, str], libvirt.virConnect] = {}
_pool_lock = threading.Lock()


def _open(uri: str, timeout_s: float) -> libvirt.virConnect:
    """Open a connection in a helper thread so a host that never answers
    (an SSH prompt, a dropped SYN) costs `timeout_s`, not forever."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["conn"] = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"libvirt-open {uri}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise GatewayError(
            f"No answer from {uri} within {timeout_s:.0f} s.",
            code=libvirt.VIR_ERR_OPERATION_TIMEOUT,
            uri=uri,
        )
    if "error" in result:
        raise GatewayError.from_libvirt(result["error"], uri)
    conn = result["conn"]
    with contextlib.suppress(libvirt.libvirtError):
        # Remote drivers only: notices a dead peer during long migrations.
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def open_connection(uri: str, timeout_s: float | None = None) -> libvirt.virConnect:
    """A new, unshared connection (the caller closes it): for aborting a job
    while another connection is busy running it."""
    return _open(uri, timeout_s or DEFAULT_CONNECT_TIMEOUT_S)


@contextlib.contextmanager
def connection(uri: str, timeout_s: float | None = None) -> Iterator[libvirt.virConnect]:
    """A pooled connection, per process (RQ forks; a socket must not be shared
    across a fork). A failure inside the block drops the connection."""
    key = (os.getpid(), uri)
    with _pool_lock:
        conn = _pool.get(key)
    if conn is not None:
        try:
            alive = conn.isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive:
            _discard(key)
            conn = None
    if conn is None:
        conn = _open(uri, timeout_s or DEFAULT_CONNECT_TIMEOUT_S)
        with _pool_lock:
            _pool[key] = conn
    try:
        yield conn
    except libvirt.libvirtError as exc:
        error = GatewayError.from_libvirt(exc, uri)
        if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            _discard(key)
        raise error from exc


def _discard(key: tuple[int, str]) -> None:
    with _pool_lock:
        conn = _pool.pop(key, None)
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def close_all() -> None:
    for key in list(_pool):
        _discard(key)


def call(uri: str, fn: Callable[[libvirt.virConnect], Any]) -> Any:
    with connection(uri) as conn:
        return fn(conn)


# --------------------------------------------------------------- host facts


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
    with connection(uri) as conn:
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


# --------------------------------------------------------------- VMs


def parse_domain_xml(xml: str) -> dict[str, Any]:
    """Everything the dashboard needs from a domain's XML, without libvirt."""
    root = ET.fromstring(xml)
    disks = []
    for disk in root.findall("devices/disk"):
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
        disks.append(
            {
                "target": target.get("dev", "") if target is not None else "",
                "bus": target.get("bus", "") if target is not None else "",
                "device": disk.get("device", "disk"),
                "type": disk_type,
                "source": source_text,
                "protocol": protocol,
                "format": driver.get("type", "") if driver is not None else "",
                "shareable": disk.find("shareable") is not None,
                "readonly": disk.find("readonly") is not None,
            }
        )
    interfaces = []
    for iface in root.findall("devices/interface"):
        source = iface.find("source")
        mac = iface.find("mac")
        model = iface.find("model")
        target = iface.find("target")
        virtualport = iface.find("virtualport")
        src = ""
        if source is not None:
            # A running VM's network NIC also names the network's bridge: the network comes first.
            src = source.get("network") or source.get("bridge") or source.get("dev") or ""
        interfaces.append(
            {
                "type": iface.get("type", ""),
                "source": src,
                "mac": mac.get("address", "") if mac is not None else "",
                "model": model.get("type", "") if model is not None else "",
                "target": target.get("dev", "") if target is not None else "",
                "portgroup": source.get("portgroup", "") if source is not None else "",
                "virtualport": virtualport.get("type", "") if virtualport is not None else "",
                "mode": source.get("mode", "") if source is not None and iface.get("type") == "direct" else "",
            }
        )
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    pin = root.find("cputune/emulatorpin")
    return {
        "domain_type": root.get("type", ""),
        "arch": os_type.get("arch", "") if os_type is not None else "",
        "machine": os_type.get("machine", "") if os_type is not None else "",
        "emulator": root.findtext("devices/emulator", ""),
        "disks": disks,
        "interfaces": interfaces,
        "hugepages": root.find("memoryBacking/hugepages") is not None,
        "cpu_xml": ET.tostring(cpu, encoding="unicode") if cpu is not None else "",
        "emulator_pin": pin.get("cpuset", "") if pin is not None else "",
    }


def _disk_sizes(dom: libvirt.virDomain, target: str) -> tuple[int | None, int | None]:
    try:
        capacity, allocation, _physical = dom.blockInfo(target)
        return int(capacity), int(allocation)
    except libvirt.libvirtError:
        return None, None


def _vm_info(dom: libvirt.virDomain) -> VMInfo:
    state, _reason = dom.state()
    info = dom.info()  # [state, maxMem KiB, mem KiB, vcpus, cpuTime]
    parsed = parse_domain_xml(dom.XMLDesc(0))
    disks = []
    for disk in parsed["disks"]:
        capacity, allocation = (None, None)
        if disk["source"] and disk["device"] in ("disk", "lun"):
            capacity, allocation = _disk_sizes(dom, disk["target"])
        disks.append(DiskInfo(capacity_bytes=capacity, allocation_bytes=allocation, **disk))
    return VMInfo(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATE_NAMES.get(state, "unknown"),
        vcpus=int(info[3]),
        memory_kib=int(info[1]),
        persistent=bool(dom.isPersistent()),
        domain_type=parsed["domain_type"],
        arch=parsed["arch"],
        machine=parsed["machine"],
        emulator=parsed["emulator"],
        disks=disks,
        interfaces=[InterfaceInfo(**i) for i in parsed["interfaces"]],
        hugepages=parsed["hugepages"],
        cpu_xml=parsed["cpu_xml"],
        emulator_pin=parsed["emulator_pin"],
    )


def list_vms(uri: str) -> list[VMInfo]:
    with connection(uri) as conn:
        vms = []
        for dom in conn.listAllDomains(0):
            try:
                vms.append(_vm_info(dom))
            except libvirt.libvirtError as exc:
                # A VM that vanished between listing and reading is not an error.
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return sorted(vms, key=lambda vm: vm.name)


def _lookup(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    return conn.lookupByUUIDString(uuid)


def vm_info(uri: str, uuid: str) -> VMInfo:
    with connection(uri) as conn:
        return _vm_info(_lookup(conn, uuid))


def find_vm(uri: str, *, uuid: str = "", name: str = "") -> VMInfo | None:
    """The VM with this UUID or name on the host, or None when it is not there."""
    with connection(uri) as conn:
        try:
            dom = conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return _vm_info(dom)


LIFECYCLE_ACTIONS = ("start", "shutdown", "reboot", "destroy")


def vm_lifecycle(uri: str, uuid: str, action: str) -> None:
    if action not in LIFECYCLE_ACTIONS:
        raise GatewayError(f"Unknown action {action!r}.", uri=uri)
    with connection(uri) as conn:
        dom = _lookup(conn, uuid)
        {"start": dom.create, "shutdown": dom.shutdown, "reboot": lambda: dom.reboot(0), "destroy": dom.destroy}[
            action
        ]()


def resume_vm(uri: str, uuid: str) -> None:
    with connection(uri) as conn:
        dom = _lookup(conn, uuid)
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


# --------------------------------------------------------------- pre-check facts


@dataclass(frozen=True)
class PathInfo:
    path: str
    exists: bool
    is_block_device: bool
    pool: str  # the storage pool covering the directory, "" when none
    pool_available_bytes: int | None
    used_by: tuple[str, ...] = ()  # names of the host's VMs (running or defined) whose disk this is
    capacity_bytes: int | None = None


def _pool_for_dir(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool | None:
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path", "")
        if target.rstrip("/") == directory.rstrip("/"):
            return pool
    return None


@contextlib.contextmanager
def _dir_pool(conn: libvirt.virConnect, directory: str) -> Iterator[tuple[libvirt.virStoragePool | None, bool]]:
    """The pool covering `directory`, else a short-lived transient one (the
    dashboard has no shell on the host). Yields (None, True) when the
    directory does not exist there."""
    pool = _pool_for_dir(conn, directory)
    if pool is not None:
        yield pool, False
        return
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = f"probe-{os.getpid()}-{threading.get_ident()}"
    ET.SubElement(ET.SubElement(root, "target"), "path").text = directory
    try:
        transient = conn.storagePoolCreateXML(ET.tostring(root, encoding="unicode"), 0)
    except libvirt.libvirtError:
        yield None, True
        return
    try:
        yield transient, True
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            transient.destroy()


def _disk_users(conn: libvirt.virConnect, path: str) -> tuple[str, ...]:
    users = []
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            sources = (s.get("file") or s.get("dev") for s in root.iterfind("devices/disk/source"))
            if path in sources:
                users.append(dom.name())
    return tuple(sorted(users))


def path_info(uri: str, path: str) -> PathInfo:
    """Whether `path` exists on the host, seen through libvirt's storage API,
    and which of the host's VMs use it."""
    directory, _, name = path.rpartition("/")
    with connection(uri) as conn, _dir_pool(conn, directory) as (pool, transient):
        if pool is None:
            # No such directory on the host: the file cannot exist there.
            return PathInfo(path, False, False, "", None)
        pool.refresh(0)
        capacity = None
        try:
            vol = pool.storageVolLookupByName(name)
            vol_type, capacity, _allocation = vol.info()
            exists, is_block = True, vol_type == libvirt.VIR_STORAGE_VOL_BLOCK
        except libvirt.libvirtError:
            exists, is_block = False, False
        available = int(pool.info()[3])
        users = _disk_users(conn, path) if exists else ()
        return PathInfo(path, exists, is_block, "" if transient else pool.name(), available, users, capacity)


def create_volume(uri: str, path: str, fmt: str, capacity_bytes: int) -> None:
    """Create an empty image at `path` (R6: same format and virtual size as
    the source) through the pool that covers its directory."""
    directory, _, name = path.rpartition("/")
    with connection(uri) as conn:
        pool = _pool_for_dir(conn, directory)
        if pool is None:
            raise GatewayError(
                f"No storage pool on the destination covers {directory}; define a 'dir' pool there "
                f"(virsh pool-define-as images dir --target {directory}; virsh pool-start images).",
                uri=uri,
            )
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", unit="bytes").text = str(int(capacity_bytes))
        ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt or "raw")
        pool.refresh(0)
        pool.createXML(ET.tostring(root, encoding="unicode"), 0)


def delete_volume(uri: str, path: str) -> bool:
    """Delete the image at `path`; False when there was none."""
    directory, _, name = path.rpartition("/")
    with connection(uri) as conn, _dir_pool(conn, directory) as (pool, _transient):
        if pool is None:
            return False
        pool.refresh(0)
        try:
            vol = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise
        vol.delete(0)
        return True


def compare_guest_cpu(uri: str, vm: dict[str, Any]) -> tuple[bool, str]:
    """Whether the destination can run the VM's CPU (R3).

    compareHypervisorCPU with the domain's own virt type answers correctly
    under TCG, where the plain compareCPU wrongly reports incompatibility.
    """
    cpu_xml = vm.get("cpu_xml") or ""
    if not cpu_xml or "host-passthrough" in cpu_xml or "host-model" in cpu_xml:
        return True, "the VM takes its CPU from the host; host CPU models are compared instead"
    with connection(uri) as conn:
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
            if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
                return False, exc.get_error_message()
            raise
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return False, "the destination's CPU does not provide the VM's CPU model"
    return True, "the destination accepts the VM's CPU model"


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
    with connection(uri) as conn:
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
            migration_pin=hasattr(libvirt, "VIR_MIGRATE_PARAM_MIGRATION_PIN"),
            postcopy=True,
            parallel=lib >= 5002000,
            max_speed_mib_s=speed,
            max_downtime_ms=downtime,
            libvirt_version=lib,
            qemu_version=qemu,
        )


def dirty_rate(uri: str, uuid: str, window_s: int) -> dict[str, Any]:
    """Measure the VM's dirty page rate (R8) with QEMU's page sampling; other
    modes crash QEMU 7.2 under TCG."""
    with connection(uri) as conn:
        dom = conn.lookupByUUIDString(uuid)
        dom.startDirtyRateCalc(window_s, 0)
        deadline = time.monotonic() + window_s + 10
        time.sleep(window_s)
        while True:
            stats = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1]
            status = stats.get("dirtyrate.calc_status")
            if status == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if status != libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
            raise GatewayError("The dirty-rate measurement did not finish in time.", uri=uri)
        return {
            "dirty_rate_mib_s": float(stats.get("dirtyrate.megabytes_per_second", 0)),
            "window_s": int(stats.get("dirtyrate.calc_period", window_s)),
            "mode": "page-sampling",
            "sample_pages": stats.get("dirtyrate.calc_sample_pages"),
        }


# --------------------------------------------------------------- migration

# openEuler's libvirt pins migration threads itself; upstream libvirt lacks the parameter.
SUPPORTS_MIGRATION_PIN_PARAM = hasattr(libvirt, "VIR_MIGRATE_PARAM_MIGRATION_PIN")


@dataclass
class MigrationSpec:
    """Everything migrateToURI3 needs, in the dashboard's own terms."""

    dconnuri: str
    migrate_uri: str = ""
    bandwidth_mib_s: int = 0
    max_downtime_ms: int | None = None
    auto_converge: bool = False
    copy_storage: bool = False
    migrate_disks: list[str] = field(default_factory=list)
    compression: str = ""
    compression_level: int | None = None
    compression_threads: int | None = None
    decompression_threads: int | None = None
    parallel_connections: int = 0
    tls: bool = False
    postcopy: bool = False
    persistent_dest: bool = True
    undefine_source: bool = True
    unsafe: bool = False
    pin_cpus: str = ""
    pin_with_migration_param: bool = False
    timeout_s: int | None = None
    timeout_action: str = ""

    def flags(self) -> int:
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        if self.persistent_dest:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if self.undefine_source:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if self.unsafe:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        if self.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if self.copy_storage:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        if self.compression:
            flags |= libvirt.VIR_MIGRATE_COMPRESSED
        if self.parallel_connections > 1:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
        if self.tls:
            flags |= libvirt.VIR_MIGRATE_TLS
        if self.postcopy or self.timeout_action == "postcopy":
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        return flags

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.migrate_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.migrate_uri
        if self.bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(self.bandwidth_mib_s)
        if self.copy_storage and self.migrate_disks:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(self.migrate_disks)
        if self.compression:
            params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = self.compression
            if self.compression == "mt":
                for key, value in (
                    (libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL, self.compression_level),
                    (libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS, self.compression_threads),
                    (libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS, self.decompression_threads),
                ):
                    if value is not None:
                        params[key] = int(value)
            elif self.compression in ("zlib", "zstd") and self.compression_level is not None:
                key = f"VIR_MIGRATE_PARAM_COMPRESSION_{self.compression.upper()}_LEVEL"
                if hasattr(libvirt, key):
                    params[getattr(libvirt, key)] = int(self.compression_level)
        if self.parallel_connections > 1:
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(self.parallel_connections)
        if self.pin_cpus and self.pin_with_migration_param:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATION_PIN] = self.pin_cpus
        return params


def migrate_flag_names(flags: int) -> list[str]:
    """'VIR_MIGRATE_LIVE', … for the bits set in `flags`."""
    names = [n for n in dir(libvirt) if n.startswith("VIR_MIGRATE_") and isinstance(getattr(libvirt, n), int)]
    single_bits = {getattr(libvirt, n): n for n in names if getattr(libvirt, n) & (getattr(libvirt, n) - 1) == 0}
    return [name for bit, name in sorted(single_bits.items()) if bit and flags & bit]


def parse_cpuset(cpuset: str, ncpus: int) -> tuple[bool, ...]:
    """'0-1,3' → a libvirt CPU map of `ncpus` booleans."""
    chosen: set[int] = set()
    for part in cpuset.split(","):
        part = part.strip()
        if not part:
            continue
        bounds = part.split("-", 1)
        if not all(b.strip().isdigit() for b in bounds):
            where = f"{part!r}" if part == cpuset.strip() else f"{part!r} in {cpuset!r}"
            raise ValueError(f"{where} is not a CPU number or a range such as 0-1.")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise ValueError(f"The range {part!r} runs backwards; write it as {high}-{low}.")
        chosen.update(range(low, high + 1))
    if not chosen or max(chosen) >= ncpus or min(chosen) < 0:
        raise ValueError(f"CPU list {cpuset!r} must name CPUs between 0 and {ncpus - 1}.")
    return tuple(i in chosen for i in range(ncpus))


def job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    stats = dom.jobStats(0)
    return stats if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE else {}


JOB_TYPE_NAMES = {
    libvirt.VIR_DOMAIN_JOB_NONE: "none",
    libvirt.VIR_DOMAIN_JOB_BOUNDED: "bounded",
    libvirt.VIR_DOMAIN_JOB_UNBOUNDED: "unbounded",
    libvirt.VIR_DOMAIN_JOB_COMPLETED: "completed",
    libvirt.VIR_DOMAIN_JOB_FAILED: "failed",
    libvirt.VIR_DOMAIN_JOB_CANCELLED: "cancelled",
}


@dataclass
class MigrationOutcome:
    completed: bool
    stats: dict[str, Any]
    error: GatewayError | None = None
    applied: dict[str, Any] = field(default_factory=dict)
    timeout_action_taken: str = ""
    pin_mode: str = ""


SETUP_POLL_S = 0.05


class MigrationRun:
    """Runs one live migration and watches it from a second connection.

    migrateToURI3 blocks; a monitor thread samples jobStats(), applies the
    timeout action and aborts on request, each on its own connection (abortJob
    on the migrating connection can hang for minutes in libvirt 9.0).
    """

    def __init__(
        self,
        source_uri: str,
        uuid: str,
        spec: MigrationSpec,
        *,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
        on_monitor_end: Callable[[], None] | None = None,
        sample_interval_s: float = 0.5,
    ) -> None:
        self.source_uri = source_uri
        self.uuid = uuid
        self.spec = spec
        self.on_sample = on_sample or (lambda stats: None)
        self.should_abort = should_abort or (lambda: False)
        # Called in the monitor thread as it ends, to release what the callbacks
        # held there (a database connection, say).
        self.on_monitor_end = on_monitor_end or (lambda: None)
        self.sample_interval_s = sample_interval_s
        self.applied: dict[str, Any] = {}
        self.timeout_action_taken = ""
        self.aborted = False
        self.last_stats: dict[str, Any] = {}
        self._done = threading.Event()
        self._monitor_error: BaseException | None = None

    def run(self) -> MigrationOutcome:
        spec = self.spec
        migrating = open_connection(self.source_uri)
        try:
            dom = migrating.lookupByUUIDString(self.uuid)
            saved_pin, pin_mode = self._pin_before(dom)
            self._apply_before(dom)
            monitor = threading.Thread(target=self._monitor, name="migration-monitor", daemon=True)
            monitor.start()
            self.applied.update({"flags": spec.flags(), "params": _jsonable(spec.params()), "dconnuri": spec.dconnuri})
            started = time.monotonic()
            try:
                dom.migrateToURI3(spec.dconnuri, spec.params(), spec.flags())
            except libvirt.libvirtError as exc:
                error = GatewayError.from_libvirt(exc, self.source_uri)
                self._finish_monitor(monitor)
                self._restore_pin(dom, saved_pin, pin_mode)
                return MigrationOutcome(
                    False, self.last_stats, error, self.applied, self.timeout_action_taken, pin_mode
                )
            wall_ms = int((time.monotonic() - started) * 1000)
            self._finish_monitor(monitor)
            stats = dict(self.last_stats)
            stats.setdefault("time_elapsed", wall_ms)
            stats["wall_time_ms"] = wall_ms
            return MigrationOutcome(True, stats, None, self.applied, self.timeout_action_taken, pin_mode)
        except libvirt.libvirtError as exc:
            raise GatewayError.from_libvirt(exc, self.source_uri) from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                migrating.close()

    def _finish_monitor(self, monitor: threading.Thread) -> None:
        self._done.set()
        monitor.join(timeout=10)

    def _apply_before(self, dom: libvirt.virDomain) -> None:
        if self.spec.max_downtime_ms:
            try:
                dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
                self.applied["max_downtime_ms"] = int(self.spec.max_downtime_ms)
            except libvirt.libvirtError:
                # Older libvirt only accepts it during the job; the monitor retries.
                self.applied["max_downtime_ms"] = None

    def _pin_before(self, dom: libvirt.virDomain) -> tuple[Any, str]:
        spec = self.spec
        if not spec.pin_cpus:
            return None, ""
        if spec.pin_with_migration_param:
            self.applied["pin"] = {"mode": "migration.pin", "cpus": spec.pin_cpus}
            return None, "migration.pin"
        # Upstream libvirt has no migration.pin: pin QEMU's emulator threads,
        # which the migration threads inherit, before the job starts (re-pinning
        # during the job blocks on libvirt's job lock).
        saved = dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        cpumap = parse_cpuset(spec.pin_cpus, len(saved))
        dom.pinEmulator(cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self.applied["pin"] = {"mode": "emulator", "cpus": spec.pin_cpus}
        return saved, "emulator"

    def _restore_pin(self, dom: libvirt.virDomain, saved: Any, mode: str) -> None:
        if mode != "emulator" or saved is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            dom.pinEmulator(tuple(saved), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def restore_pin_on(self, uri: str, saved_len: int | None = None) -> None:
        """After success the emulator pin travelled with the VM: give it all
        CPUs back on the destination."""
        if self.applied.get("pin", {}).get("mode") != "emulator":
            return
        with connection(uri) as conn:
            dom = conn.lookupByUUIDString(self.uuid)
            ncpus = conn.getInfo()[2]
            with contextlib.suppress(libvirt.libvirtError):
                dom.pinEmulator(tuple([True] * ncpus), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def _monitor(self) -> None:
        try:
            self._watch()
        finally:
            self.on_monitor_end()

    def _watch(self) -> None:
        try:
            watcher = open_connection(self.source_uri)
        except GatewayError as exc:
            self._monitor_error = exc
            return
        try:
            dom = watcher.lookupByUUIDString(self.uuid)
            started = time.monotonic()
            downtime_pending = self.applied.get("max_downtime_ms", 0) is None
            sized = setup_recorded = False
            while not self._done.is_set():
                try:
                    stats = job_stats(dom)
                except libvirt.libvirtError:
                    stats = {}
                sized = sized or bool(stats.get("data_total"))
                if stats:
                    self.last_stats = stats
                    if downtime_pending:
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
                            self.applied["max_downtime_ms"] = int(self.spec.max_downtime_ms)
                            downtime_pending = False
                    # Setup readings are all zeros: one is enough for the chart.
                    if sized or not setup_recorded:
                        setup_recorded = True
                        try:
                            self.on_sample(stats)
                        except Exception:  # noqa: BLE001 - a display failure must not stop the watch
                            pass
                if not self.aborted and self.should_abort():
                    self.aborted = True
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.abortJob()
                spec = self.spec
                if (
                    spec.timeout_s
                    and spec.timeout_action
                    and not self.timeout_action_taken
                    and time.monotonic() - started >= spec.timeout_s
                    and stats
                ):
                    self._take_timeout_action(dom)
                # Until libvirt has sized the job (the disk mirrors or the
                # first pass start) poll fast, so that even a sub-second
                # migration gets a first reading with its sizes.
                self._done.wait(self.sample_interval_s if sized else min(self.sample_interval_s, SETUP_POLL_S))
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                watcher.close()

    def _take_timeout_action(self, dom: libvirt.virDomain) -> None:
        action = self.spec.timeout_action
        self.timeout_action_taken = action
        try:
            if action == "suspend":
                # The guide's --timeout: pause the guest so the copy finishes;
                # libvirt resumes it on the destination.
                dom.suspend()
            elif action == "postcopy":
                dom.migrateStartPostCopy(0)
            elif action == "abort":
                self.aborted = True
                dom.abortJob()
        except libvirt.libvirtError as exc:
            self.timeout_action_taken = f"{action} failed: {exc.get_error_message()}"


def completed_job_stats(uri: str, uuid: str) -> dict[str, Any]:
    """Final statistics of the last migration, read where the VM now is
    (with UNDEFINE_SOURCE the source no longer knows the domain)."""
    with connection(uri) as conn:
        try:
            dom = conn.lookupByUUIDString(uuid)
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            return {}
    return stats if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE else {}


def active_job(uri: str, uuid: str) -> dict[str, Any]:
    """The VM's running job on the host, {} when none (or no such VM)."""
    with connection(uri) as conn:
        try:
            return job_stats(conn.lookupByUUIDString(uuid))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return {}
            raise


def abort_job(uri: str, uuid: str) -> None:
    """Abort the VM's job from a fresh connection (see MigrationRun)."""
    conn = open_connection(uri)
    try:
        conn.lookupByUUIDString(uuid).abortJob()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
            raise GatewayError.from_libvirt(exc, uri) from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def vm_state(uri: str, uuid: str) -> str | None:
    """'running', 'paused', … or None when the host does not have the VM."""
    with connection(uri) as conn:
        try:
            state, _ = conn.lookupByUUIDString(uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
    return STATE_NAMES.get(state, "unknown")


def destroy_leftover(uri: str, uuid: str) -> bool:
    """Remove a paused incoming copy left on a destination by a failed
    migration. Returns True when one was removed. A running VM is never touched."""
    with connection(uri) as conn:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise
        state, _ = dom.state()
        if state == libvirt.VIR_DOMAIN_RUNNING:
            return False
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent() and state != libvirt.VIR_DOMAIN_SHUTOFF:
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
        return True


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items()}
