"""Three real libvirt hosts on this machine (the lab), A, B and C, for
development, tests and demos.

Each host is a network namespace (network.py) in which a plain `libvirtd
--listen` runs with libvirt's own directories bind-mounted from the lab's root
(daemons.py). The dashboard (root namespace) reaches each daemon through its
unix socket; peer-to-peer migrations go daemon to daemon over the veths and
the bridge that joins them. Guests (guests.py) are defined on host A; they are
TCG and boot a Debian kernel with a busybox initramfs that dirties memory at a
chosen rate (images.py). Tests inject faults (faults.py, `lab.fault`; the
images of hosts B and C sit on small filesystems of their own to fill,
imagefs.py) and check that a guest came through whole (integrity.py). See
docs/lab.md in the shared docs for the facts behind the choices made here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hosts import gateway

from . import imagefs, images, network, packages
from .daemons import Daemons
from .faults import Faults
from .guests import BOOT_TIMEOUT_S, DEMO_GUESTS, TICK_TIMEOUT_S, DiskSpec, Guests, GuestSpec, image_path
from .integrity import PATTERN_TIMEOUT_S, GuestChecks, GuestHealth
from .layout import HOSTS, TLS_HOSTS, HostDef, Layout, default_root, say_keys
from .network import ROOT_VETHS, SWITCH_NETNS
from .pki import LabPki, ensure_lab_pki
from .status import GuestState, HostStatus, LabStatus
from .system import LabError, cannot_run_reason

if TYPE_CHECKING:
    from hosts.models import Host

__all__ = [
    "DEMO_GUESTS",
    "HOSTS",
    "ROOT_VETHS",
    "SWITCH_NETNS",
    "TLS_HOSTS",
    "DiskSpec",
    "Faults",
    "GuestHealth",
    "GuestSpec",
    "HostDef",
    "Lab",
    "LabError",
    "LabPki",
    "LabStatus",
]

log = logging.getLogger(__name__)


class Lab(Layout):
    """The lab as one object: its paths (Layout), its life (up, down, status,
    heal), its guests, the bridges NIC tests add, the faults fault tests
    inject (`lab.fault`) and the checks of a guest after one."""

    cannot_run_reason = staticmethod(cannot_run_reason)
    add_bridge = staticmethod(network.add_bridge)
    remove_bridge = staticmethod(network.remove_bridge)

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(Path(root) if root else default_root())
        self._daemons = Daemons(self)
        self._guests = Guests(self)
        self._faults = Faults(self, self._daemons)
        self._checks = GuestChecks(self, self._daemons)

    @property
    def fault(self) -> Faults:
        """Faults and their undos: `lab.fault.cut_link("A")`, `with lab.fault.link_cut("A"): ...`."""
        return self._faults

    @property
    def pki(self) -> LabPki:
        return LabPki.under(self.root)

    def image_path(self, guest: str, disk: DiskSpec) -> Path:
        return image_path(self, guest, disk)

    # ---------------------------------------------------------- up / down / status

    def up(self, start_guests: bool = True) -> LabStatus:
        """Bring the lab up, or repair whatever part of it is missing."""
        reason = cannot_run_reason()
        if reason:
            raise LabError(reason)
        with self._locked():
            # First: a hung daemon would be taken for a dead one, a cut link for a broken network.
            with self._step("undo faults"):
                self._faults.undo_all()
            with self._step("packages"):
                packages.ensure_packages()
            with self._step("guest kernel + initramfs"):
                images.ensure_kernel(self)
                images.ensure_initrd(self)
            with self._step("certificates"):
                pki_changed = ensure_lab_pki(self)
            with self._step("network"):
                network.ensure(stop_daemons=self._daemons.stop_all)
            with self._step(f"libvirtd {say_keys(HOSTS)}"):
                for key in HOSTS:
                    self._daemons.ensure(key, restart=key in pki_changed)
            with self._step(f"routes to the TLS ports of {say_keys(TLS_HOSTS)}"):
                network.ensure_root_routes()
            with self._step(f"images filesystems of {say_keys(imagefs.IMAGES_FS_HOSTS)}"):
                for key in HOSTS:
                    imagefs.ensure(self, key, self._daemons.pid(key))
            with self._step("warm daemons (QEMU capabilities)"):
                self._daemons.warm()
            with self._step("storage pools, shared dir"):
                for key in HOSTS:
                    self._daemons.check_shared_dir(key)
                    self._daemons.ensure_pool(key)
            with self._step("demo guests defined"):
                self._guests.define_demo_guests()
            if start_guests:
                with self._step("demo guests booted"):
                    self._guests.start_demo_guests()
        return self.status()

    def down(self) -> None:
        """Stop everything the lab started and remove its namespaces and links."""
        with self._locked():
            with self._step("undo faults"):
                self._faults.undo_all()
            with self._step("destroy guests"):
                self._guests.stop_all()
            with self._step("stop daemons and guest processes"):
                self._daemons.stop_all()
            with self._step("remove namespaces and links"):
                network.remove()
            with self._step(f"unmount images filesystems of {say_keys(imagefs.IMAGES_FS_HOSTS)}"):
                for key in HOSTS:
                    imagefs.unmount(self, key)

    def heal(self) -> LabStatus:
        """Undo every fault (links up, shaping off, disks unfilled, daemons
        continued) and start any daemon that is gone: `up()` without booting guests."""
        return self.up(start_guests=False)

    def status(self) -> LabStatus:
        hosts = {}
        for key, hd in HOSTS.items():
            alive = self._daemons.alive(key)
            answering, guests = False, ()
            if alive and not self._faults.daemon_is_hung(key):  # a hung daemon would block the call forever
                try:
                    doms = gateway.list_domains(self.uri(key))
                    guests = tuple(GuestState(d.name, gateway.STATE_NAMES[d.state]) for d in doms)
                    answering = True
                except gateway.GatewayError:
                    pass
            hosts[key] = HostStatus(
                key,
                hd.hostname,
                hd.address,
                hd.netns,
                network.netns_exists(key),
                self._daemons.pid(key),
                alive,
                answering,
                guests,
            )
        return LabStatus(self.root, hosts, network.switch_exists(), network.root_routes(), tuple(self._faults.active()))

    # ---------------------------------------------------------- guests (see guests.Guests)

    def define_guest(
        self,
        name: str,
        memory_mib: int,
        dirty_mb: int,
        dirty_sleep: float = 1,
        disks: Sequence[DiskSpec] = (),
        host: str = "A",
        interfaces: Sequence[str] = (),
    ) -> GuestSpec:
        return self._guests.define(name, memory_mib, dirty_mb, dirty_sleep, disks, host, interfaces)

    def reset_guest(self, name: str) -> None:
        self._guests.reset(name)

    def park_guest(self, name: str) -> None:
        self._guests.park(name)

    def stop_guest(self, name: str) -> None:
        self._guests.stop(name)

    def remove_guest(self, name: str) -> None:
        self._guests.remove(name)

    def stop_all_guests(self) -> None:
        """Destroy every running guest on every host (definitions stay)."""
        self._guests.stop_all()

    def where(self, name: str) -> str | None:
        return self._guests.where(name)

    def wait_booted(self, name: str, host: str, timeout: float = BOOT_TIMEOUT_S) -> float:
        return self._guests.wait_booted(name, host, timeout)

    def wait_tick(self, name: str, host: str, timeout: float = TICK_TIMEOUT_S) -> None:
        self._guests.wait_tick(name, host, timeout)

    # ---------------------------------------------------------- a guest after a fault (see integrity.GuestChecks)

    def where_running(self, name: str) -> list[tuple[str, str]]:
        return self._checks.where_running(name)

    def last_tick(self, name: str, host: str) -> float | None:
        return self._checks.last_tick(name, host)

    def counter_advanced(
        self, name: str, host: str, since: float | None = None, timeout: float = TICK_TIMEOUT_S
    ) -> bool:
        return self._checks.counter_advanced(name, host, since, timeout)

    def pattern_intact(
        self, name: str, host: str, since: float | None = None, timeout: float = PATTERN_TIMEOUT_S
    ) -> bool:
        return self._checks.pattern_intact(name, host, since, timeout)

    def check_guest(self, name: str, since: float | None = None) -> GuestHealth:
        return self._checks.check_guest(name, since)

    def kernel_panics(self, since: float) -> list[str]:
        return self._checks.kernel_panics(since)

    # ---------------------------------------------------------- Django

    def register(self) -> list[Host]:
        """Create or update the lab's hosts (lab-a, lab-b, lab-c) in the database
        and read their inventory; they come in the order of HOSTS."""
        from hosts.inventory import refresh_host
        from hosts.models import Host

        hosts = []
        for key in HOSTS:
            host, _ = Host.objects.update_or_create(
                name=f"lab-{key.lower()}",
                defaults={
                    "uri": self.uri(key),
                    "peer_uri": self.peer_uri(key),
                    "migration_address": self.migration_address(key),
                    "shared_prefixes": str(self.shared_dir),
                    "enabled": True,
                },
            )
            hosts.append(refresh_host(host))
        return hosts

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up()/down() at a time, across processes (a test run and a shell)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lab.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _step(self, label: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        except gateway.GatewayError as exc:
            # A LabError is what `manage.py lab` and the test fixtures turn into a message.
            raise LabError(f"{label}: {exc}") from exc
        log.info("%-36s %6.2f s", label, time.monotonic() - start)
