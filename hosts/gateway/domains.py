"""The VMs on a host: what they are (read from their XML and libvirt's
counters), what state they are in, the few actions the dashboard takes, and
those the lab takes on its guests by name (define, start, destroy, undefine).

Reads run under the gateway's call bound. Actions have no bound of their own
(starting or destroying a VM takes what it takes): keepalive ends them when
the daemon falls silent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import libvirt

from .connections import UNBOUNDED, call
from .constants import RUNNING_STATES, STATE_NAMES, DomainState, ErrorCode
from .domain_xml import DiskInfo, InterfaceInfo, parse_domain_xml
from .errors import GatewayError


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
    for disk in parsed.disks:
        if disk.source and disk.device in ("disk", "lun"):
            capacity, allocation = _disk_sizes(dom, disk.target)
            disk = replace(disk, capacity_bytes=capacity, allocation_bytes=allocation)
        disks.append(disk)
    return VMInfo(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATE_NAMES.get(state, "unknown"),
        vcpus=int(info[3]),
        memory_kib=int(info[1]),
        persistent=bool(dom.isPersistent()),
        domain_type=parsed.domain_type,
        arch=parsed.arch,
        machine=parsed.machine,
        emulator=parsed.emulator,
        disks=disks,
        interfaces=list(parsed.interfaces),
        hugepages=parsed.hugepages,
        cpu_xml=parsed.cpu_xml,
        emulator_pin=parsed.emulator_pin,
    )


def _read_all(conn: libvirt.virConnect, read: Callable[[libvirt.virDomain], Any], flags: int = 0) -> list[Any]:
    found = []
    for dom in conn.listAllDomains(flags):
        try:
            found.append(read(dom))
        except libvirt.libvirtError as exc:
            # A VM that vanished between listing and reading is not an error.
            if exc.get_error_code() != ErrorCode.NO_DOMAIN:
                raise
    return sorted(found, key=lambda each: each.name)


def list_vms(uri: str) -> list[VMInfo]:
    return call(uri, lambda conn: _read_all(conn, _vm_info))


def _lookup(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    return conn.lookupByUUIDString(uuid)


def vm_info(uri: str, uuid: str) -> VMInfo:
    return call(uri, lambda conn: _vm_info(_lookup(conn, uuid)))


def find_vm(uri: str, *, uuid: str = "", name: str = "") -> VMInfo | None:
    """The VM with this UUID or name on the host, or None when the host says
    it is not there (GatewayError when the host does not answer)."""

    def read(conn: libvirt.virConnect) -> VMInfo | None:
        try:
            dom = conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.NO_DOMAIN:
                return None
            raise
        return _vm_info(dom)

    return call(uri, read)


def vm_state(uri: str, uuid: str) -> str | None:
    """'running', 'paused', … or None when the host answers that it does not
    have the VM. Unknown is not absent: a host that does not answer raises
    GatewayError."""

    def read(conn: libvirt.virConnect) -> int | None:
        try:
            state, _ = conn.lookupByUUIDString(uuid).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.NO_DOMAIN:
                return None
            raise
        return state

    state = call(uri, read)
    return None if state is None else STATE_NAMES.get(state, "unknown")


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


LIFECYCLE_ACTIONS = ("start", "shutdown", "reboot", "destroy")


def vm_lifecycle(uri: str, uuid: str, action: str) -> None:
    if action not in LIFECYCLE_ACTIONS:
        raise GatewayError(f"Unknown action {action!r}.", uri=uri)

    def act(conn: libvirt.virConnect) -> None:
        dom = _lookup(conn, uuid)
        {"start": dom.create, "shutdown": dom.shutdown, "reboot": lambda: dom.reboot(0), "destroy": dom.destroy}[
            action
        ]()

    call(uri, act, UNBOUNDED)


def resume_vm(uri: str, uuid: str) -> None:
    def resume(conn: libvirt.virConnect) -> None:
        dom = _lookup(conn, uuid)
        if dom.state()[0] == DomainState.PAUSED:
            dom.resume()

    call(uri, resume, UNBOUNDED)


def lookup_or_none(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    """The domain with this UUID, or None when the host has none."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == ErrorCode.NO_DOMAIN:
            return None
        raise


def remove_stale_copy(uri: str, uuid: str) -> bool:
    """Destroy and undefine the VM's copy on a destination, whatever its
    state: for a failed migration whose VM runs on the source, where the
    destination's libvirt may still start its incoming copy late (a Finish
    it received before the link or the daemon failed). True when one was there."""

    def remove(conn: libvirt.virConnect) -> bool:
        dom = lookup_or_none(conn, uuid)
        if dom is None:
            return False
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
        return True

    return call(uri, remove, UNBOUNDED)


@dataclass(frozen=True)
class DomainStatus:
    """Where a domain stands, without reading what it is (VMInfo): cheap
    enough to poll."""

    name: str
    uuid: str
    state: DomainState
    active: bool
    persistent: bool


def _status(dom: libvirt.virDomain) -> DomainStatus:
    state, _reason = dom.state()
    return DomainStatus(
        dom.name(), dom.UUIDString(), DomainState(state), bool(dom.isActive()), bool(dom.isPersistent())
    )


def domain_status(uri: str, name: str) -> DomainStatus | None:
    """The domain called `name` on the host, or None when the host says it is
    not there (GatewayError when the host does not answer)."""

    def read(conn: libvirt.virConnect) -> DomainStatus | None:
        try:
            return _status(conn.lookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.NO_DOMAIN:
                return None
            raise

    return call(uri, read)


def list_domains(uri: str, *, active_only: bool = False) -> list[DomainStatus]:
    flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0
    return call(uri, lambda conn: _read_all(conn, _status, flags))


def define_domain(uri: str, xml: str) -> None:
    """Define the domain, or redefine the one with the same name and UUID."""
    call(uri, lambda conn: conn.defineXML(xml), UNBOUNDED)


def read_domain_xml(uri: str, name: str) -> str:
    """The domain's XML as it is now (the live one while it runs)."""
    return call(uri, lambda conn: conn.lookupByName(name).XMLDesc(0))


def start_domain(uri: str, name: str) -> None:
    call(uri, lambda conn: conn.lookupByName(name).create(), UNBOUNDED)


def destroy_domain(uri: str, name: str) -> None:
    call(uri, lambda conn: conn.lookupByName(name).destroy(), UNBOUNDED)


def undefine_domain(uri: str, name: str) -> None:
    call(uri, lambda conn: conn.lookupByName(name).undefine(), UNBOUNDED)
