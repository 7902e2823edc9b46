"""The lab's guests: TCG domains (no usable KVM here) that boot Debian's kernel
with the lab's initramfs and dirty memory at a chosen rate, their disks, and
the moves tests make with them (define, park on host A, reset, remove). Host A
is the guests' home: they are defined, parked and reset there."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import string
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hosts import gateway

from . import images
from .layout import HOSTS, IMAGES_DIR, QEMU, SERIAL_LOG_DIR, Layout
from .system import LabError

BOOT_TIMEOUT_S = 120.0  # one TCG guest boots in 7-8 s; four share two cores
TICK_TIMEOUT_S = 15.0  # guests print a tick every second
DESTROY_TIMEOUT_S = 60.0  # libvirt ends a failed migration's job within seconds
# What files/init.sh prints: its memory pattern's checksum at boot, then again every few seconds.
BOOT_PATTERN_RE = re.compile(r"^PATTERN sum=([0-9a-f]{32}) boot=(\S+)", re.MULTILINE)
PATTERN_CHECK_RE = re.compile(r"^pattern sum=([0-9a-f]{32}) boot=(\S+) uptime=([\d.]+)", re.MULTILINE)
TICK_RE = re.compile(r"^tick uptime=([\d.]+)", re.MULTILINE)
GUEST_UUID_NAMESPACE = uuid.UUID("6c61622d-6775-6573-7473-000000000000")
DOMAIN_TEMPLATE = Path(__file__).parent / "files" / "domain.xml"
HOME = "A"


@dataclass(frozen=True)
class DiskSpec:
    """A guest disk. `shared` disks live in the lab's shared directory (every
    host sees them); the others in the host's own /var/lib/libvirt/images."""

    target: str  # vda, vdb, ...
    size_mib: int = 64
    format: str = "qcow2"  # or "raw"
    shared: bool = False
    readonly: bool = False
    shareable: bool = False


@dataclass(frozen=True)
class GuestSpec:
    """`dirty_mb` and `dirty_sleep` go on the kernel command line, where the
    guest's /init reads them: MiB rewritten per round, seconds between rounds."""

    name: str
    memory_mib: int
    dirty_mb: int
    dirty_sleep: float = 1
    disks: tuple[DiskSpec, ...] = ()
    interfaces: tuple[str, ...] = ()  # <interface> elements, as XML


DEMO_GUESTS: tuple[GuestSpec, ...] = (
    GuestSpec("web-shared", 256, dirty_mb=4, disks=(DiskSpec("vda", shared=True),)),
    GuestSpec(
        "db-local",
        256,
        dirty_mb=2,
        disks=(
            DiskSpec("vda"),
            DiskSpec("vdb", size_mib=16, format="raw", readonly=True),
            DiskSpec("vdc", size_mib=16, format="raw", shared=True, shareable=True),
        ),
    ),
    GuestSpec("cache-hot", 256, dirty_mb=32, dirty_sleep=1),
    GuestSpec("idle", 128, dirty_mb=0),
)


def image_path(layout: Layout, guest: str, disk: DiskSpec) -> Path:
    """The disk's path as libvirt sees it (the same on every host)."""
    ext = "qcow2" if disk.format == "qcow2" else "img"
    base = layout.shared_dir if disk.shared else Path(IMAGES_DIR)
    return base / f"{guest}-{disk.target}.{ext}"


def boot_pattern_file(layout: Layout, name: str) -> Path:
    """The guest's last boot pattern as wait_booted saw it: "<sum> <boot id>"."""
    return layout.root / "guests" / f"{name}.pattern"


def domain_xml(layout: Layout, spec: GuestSpec) -> str:
    disks = []
    for disk in spec.disks:
        # Shareable disks are open on several hosts at once: no host page cache.
        cache = " cache='none'" if disk.shareable else ""
        flags = ("<readonly/>" if disk.readonly else "") + ("<shareable/>" if disk.shareable else "")
        disks.append(
            f"<disk type='file' device='disk'><driver name='qemu' type='{disk.format}'{cache}/>"
            f"<source file='{image_path(layout, spec.name, disk)}'/><target dev='{disk.target}' bus='virtio'/>"
            f"{flags}</disk>"
        )
    return string.Template(DOMAIN_TEMPLATE.read_text()).substitute(
        name=spec.name,
        # A fixed UUID per name: redefining keeps the same domain, and every host agrees on it.
        uuid=uuid.uuid5(GUEST_UUID_NAMESPACE, spec.name),
        memory_mib=spec.memory_mib,
        kernel=layout.kernel_path,
        initrd=layout.initrd_path,
        cmdline=f"console=ttyS0 loglevel=4 mitigations=off dirty_mb={spec.dirty_mb} dirty_sleep={spec.dirty_sleep}",
        emulator=QEMU,
        devices="\n    ".join([*disks, *spec.interfaces]),
        serial_log=f"{SERIAL_LOG_DIR}/{spec.name}-serial.log",
    )


class Guests:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._specs: dict[str, GuestSpec] = {g.name: g for g in DEMO_GUESTS}

    def define(
        self,
        name: str,
        memory_mib: int,
        dirty_mb: int,
        dirty_sleep: float = 1,
        disks: Sequence[DiskSpec] = (),
        host: str = HOME,
        interfaces: Sequence[str] = (),
    ) -> GuestSpec:
        """Define (or redefine) a guest on `host`, creating its disk images.
        `interfaces` are <interface> elements as XML; the default is no NIC."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise LabError(f"guest name {name!r}: use letters, digits, '-', '_' and '.'")
        spec = GuestSpec(name, memory_mib, dirty_mb, dirty_sleep, tuple(disks), tuple(interfaces))
        self._specs[name] = spec
        self._define(spec, host)
        return spec

    def define_demo_guests(self) -> None:
        """Each demo guest that no host knows, on host A; the read-only images
        of those already defined, on every host that lacks them."""
        for spec in DEMO_GUESTS:
            if self.where(spec.name) is None:
                self._define(spec, HOME)
            else:
                self._install_readonly_images(spec)

    def start_demo_guests(self) -> None:
        started = []
        for spec in DEMO_GUESTS:
            key = self.where(spec.name)
            if not self._lookup(key, spec.name).active:
                self._layout.serial_log(spec.name, key).unlink(missing_ok=True)
                gateway.start_domain(self._layout.uri(key), spec.name)
                started.append((spec.name, key))
        for name, key in started:
            self.wait_booted(name, key)

    def reset(self, name: str) -> None:
        """Put the guest back on host A, freshly booted (dirty loop running)."""
        self.park(name)
        self._layout.serial_log(name, HOME).unlink(missing_ok=True)
        gateway.start_domain(self._layout.uri(HOME), name)
        self.wait_booted(name, HOME)

    def park(self, name: str) -> None:
        """Stop the guest and leave it defined, shut off, on host A only (the
        layout tests start from); the other hosts' copies of its local images
        are deleted."""
        moved_xml = None  # its definition on another host (where it was active, if it had several)
        for key in [k for k in HOSTS if k != HOME]:
            dom = self._lookup(key, name)
            if dom is not None:
                xml = self._remove(key, dom)
                self._remove_local_copies(key, xml)
                if moved_xml is None or dom.active:
                    moved_xml = xml
        dom_home = self._lookup(HOME, name)
        if dom_home is not None and dom_home.active:
            _destroy(self._layout.uri(HOME), name)
        if name in self._specs:
            self._define(self._specs[name], HOME)  # also undoes XML drift (pinning, ...) left by a test
        elif dom_home is None:
            if moved_xml is None:
                raise LabError(f"guest {name!r} is defined on no lab host; define_guest() it first")
            gateway.define_domain(self._layout.uri(HOME), moved_xml)

    def stop(self, name: str) -> None:
        """Destroy the guest wherever it runs (its definitions stay)."""
        for key in HOSTS:
            dom = self._lookup(key, name)
            if dom is not None and dom.active:
                _destroy(self._layout.uri(key), name)

    def stop_all(self) -> None:
        """Destroy every running guest on every host."""
        running = []
        for key in HOSTS:
            uri = self._layout.uri(key)
            with contextlib.suppress(gateway.GatewayError):  # a dead daemon's QEMUs are stopped with its host
                running += [(uri, dom.name) for dom in gateway.list_domains(uri, active_only=True)]
        # Each destroy waits ~2 s for a TCG QEMU to exit: side by side they cost one wait.
        with concurrent.futures.ThreadPoolExecutor(max(len(running), 1)) as pool:
            list(pool.map(lambda where: _destroy(*where), running))

    def remove(self, name: str) -> None:
        """Destroy and undefine the guest on every host (a benchmark's own
        guests); the copies of its local images on hosts other than A are deleted."""
        for key in HOSTS:
            dom = self._lookup(key, name)
            if dom is None:
                continue
            xml = self._remove(key, dom)
            if key != HOME:
                self._remove_local_copies(key, xml)
        self._specs.pop(name, None)
        boot_pattern_file(self._layout, name).unlink(missing_ok=True)

    def where(self, name: str) -> str | None:
        """The host the guest runs on, else the one it is defined on, else None."""
        found = {key: self._lookup(key, name) for key in HOSTS}
        for key, dom in found.items():
            if dom is not None and dom.state == gateway.DomainState.RUNNING:
                return key
        for key, dom in found.items():
            if dom is not None and dom.active:
                return key
        return next((key for key, dom in found.items() if dom is not None), None)

    def wait_booted(self, name: str, host: str, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Wait until the guest's /init runs (and its dirty loop, if any); seconds waited."""
        log_path = self._layout.serial_log(name, host)
        start = time.monotonic()

        def booted() -> bool:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            ready = re.search(r"GUEST-READY .*dirty_mb=(\d+)", text)
            return bool(ready) and (ready.group(1) == "0" or "GUEST-DIRTY-START" in text)

        while not booted():
            dom = self._lookup(host, name)
            if dom is None or not dom.active:
                raise LabError(f"guest {name} is not running on host {host}; serial log: {_log_tail(log_path)}")
            if time.monotonic() - start > timeout:
                raise LabError(f"guest {name} did not boot on host {host} in {timeout:.0f} s: {_log_tail(log_path)}")
            time.sleep(0.2)
        self._remember_boot_pattern(name, log_path.read_text(errors="replace"))
        return time.monotonic() - start

    def wait_tick(self, name: str, host: str, timeout: float = TICK_TIMEOUT_S) -> None:
        """Wait for a new `tick` line on the guest's serial console on `host`:
        proof that the guest runs there (after a migration, for instance)."""
        log_path = self._layout.serial_log(name, host)

        def ticks() -> int:
            return log_path.read_text(errors="replace").count("tick ") if log_path.exists() else 0

        before = ticks()
        if not gateway.wait_for(lambda: ticks() > before, timeout):
            raise LabError(f"guest {name} printed no tick on host {host} in {timeout:.0f} s: {_log_tail(log_path)}")

    def _remember_boot_pattern(self, name: str, log_text: str) -> None:
        """Keep the boot's PATTERN line beyond the serial log: a QEMU started on
        a host (a migration back to it, say) empties that host's log."""
        found = BOOT_PATTERN_RE.findall(log_text)
        if found:
            record = boot_pattern_file(self._layout, name)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(" ".join(found[-1]) + "\n")

    def _lookup(self, key: str, name: str) -> gateway.DomainStatus | None:
        try:
            return gateway.domain_status(self._layout.uri(key), name)
        except gateway.GatewayError as exc:
            raise LabError(f"host {key}: {exc}") from exc

    def _remove(self, key: str, dom: gateway.DomainStatus) -> str:
        """Destroy and undefine the domain on the host; its XML as it was."""
        uri = self._layout.uri(key)
        xml = gateway.read_domain_xml(uri, dom.name)
        if dom.active:
            _destroy(uri, dom.name)
        if dom.persistent:
            gateway.undefine_domain(uri, dom.name)
        return xml

    def _define(self, spec: GuestSpec, host: str) -> None:
        for disk in spec.disks:
            if not _installed(disk):
                path = self._layout.host_path(host, image_path(self._layout, spec.name, disk))
                images.create_disk(path, disk.format, disk.size_mib)
        self._install_readonly_images(spec)
        gateway.define_domain(self._layout.uri(host), domain_xml(self._layout, spec))

    def _install_readonly_images(self, spec: GuestSpec) -> None:
        """Read-only images are "installed" on every host (like an ISO library):
        they are never copied by a migration, so each destination needs its own."""
        for disk in spec.disks:
            if _installed(disk):
                for key in HOSTS:
                    path = self._layout.host_path(key, image_path(self._layout, spec.name, disk))
                    images.create_disk(path, disk.format, disk.size_mib)

    def _remove_local_copies(self, key: str, xml: str) -> None:
        """Delete the host's copies of a guest's non-shared, writable images."""
        for disk in ET.fromstring(xml).iterfind("devices/disk"):
            source = disk.find("source")
            if source is None or source.get("file") is None or disk.find("readonly") is not None:
                continue
            local = self._layout.host_path(key, source.get("file"))
            if local != Path(source.get("file")):  # below a bind mount: this host's own file
                local.unlink(missing_ok=True)
        with contextlib.suppress(gateway.GatewayError):
            gateway.refresh_pool(self._layout.uri(key), "default")


def _installed(disk: DiskSpec) -> bool:
    """Whether every host has its own copy of the disk's image (read-only, not shared)."""
    return disk.readonly and not disk.shared


def _destroy(uri: str, name: str) -> None:
    """Stop the domain for sure. Right after a failed migration libvirt may
    still hold the domain's job and refuse the destroy for a while; undefining
    it then would leave it running as a transient domain."""
    deadline = time.monotonic() + DESTROY_TIMEOUT_S
    while True:
        try:
            gateway.destroy_domain(uri, name)
        except gateway.GatewayError as exc:
            try:
                dom = gateway.domain_status(uri, name)
            except gateway.GatewayError:
                dom = None  # the daemon is gone: so are its QEMUs
            if dom is None or not dom.active:
                return  # it stopped meanwhile
            if time.monotonic() > deadline:
                raise LabError(f"guest {name} on {uri} does not stop: {exc}") from exc
            time.sleep(1)
            continue
        return


def _log_tail(path: Path) -> str:
    if not path.exists():
        return "(no serial log yet)"
    return " / ".join(path.read_text(errors="replace").strip().splitlines()[-3:])
