"""Faults a test injects into the lab, each with its undo: a host's link to
the others cut or slowed, a daemon killed, hung or restarted, the images
filesystem of host B or C filled. Every call is idempotent and every undo is
safe whatever state the lab is in (a test's `finally`, a lab half down);
`undo_all` is what `Lab.up()` and `Lab.heal()` start with. See "Faults" in
docs/lab.md in the shared docs for what libvirt does under each.

    with lab.fault.link_cut("A"):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from hosts import gateway

from . import imagefs, network
from .daemons import Daemons
from .layout import HOSTS, LIBVIRT_TCP_PORT, HostDef, Layout, hostdef
from .system import LabError, probe, process_alive, run

log = logging.getLogger(__name__)

SLOW_LINK_RATE = "24mbit"
# lab.md's measured shaping: a burst of 64 kB, and packets that would wait longer than 500 ms are dropped.
SLOW_LINK_BURST, SLOW_LINK_LATENCY = "64kb", "500ms"
SIGNAL_TIMEOUT_S = 5.0
LINK_PROBE_TIMEOUT_S = 2


class Faults:
    def __init__(self, layout: Layout, daemons: Daemons) -> None:
        self._layout = layout
        self._daemons = daemons

    # ---------------------------------------------------------- a host's link to the others

    def cut_link(self, key: str) -> None:
        """Take the host's end of its lab veth down: it reaches no other host and
        no other host reaches it; the others still reach each other."""
        hd = hostdef(key)
        run(["ip", "-n", hd.netns, "link", "set", hd.veth, "down"], f"cut host {hd.key}'s link")

    def restore_link(self, key: str) -> None:
        hd = hostdef(key)
        # No namespace or no veth: `lab up` builds the network afresh.
        if network.netns_exists(hd.key) and probe("ip", "-n", hd.netns, "link", "show", "dev", hd.veth).returncode == 0:
            run(["ip", "-n", hd.netns, "link", "set", hd.veth, "up"], f"restore host {hd.key}'s link")

    def link_works(self, key: str, peer: str | None = None) -> bool:
        """Whether a TCP connection from the host's namespace reaches the libvirtd
        of `peer`, or of every other host when `peer` is None."""
        hd = hostdef(key)
        if not network.netns_exists(hd.key):
            return False
        for other in self._peers(hd.key, peer):
            connect = f"exec 3<>/dev/tcp/{other.address}/{LIBVIRT_TCP_PORT}"
            cmd = ("ip", "netns", "exec", hd.netns, "timeout", str(LINK_PROBE_TIMEOUT_S), "bash", "-c", connect)
            if probe(*cmd).returncode != 0:
                return False
        return True

    def reset_connections(self, key: str, peer: str | None = None) -> int:
        """Abort the host's TCP connections to `peer`, or to every other host
        when `peer` is None (`ss -K`), as a middlebox's reset or a cut longer
        than TCP's patience would: libvirt's peer-to-peer connection, the
        migration stream, the disk copy. The RST reaches the other side only
        over a working link; with the link cut, reset the other end too.
        Returns how many connections were aborted."""
        hd = hostdef(key)
        if not network.netns_exists(hd.key):
            return 0
        killed = 0
        for other in self._peers(hd.key, peer):
            aborted = run(
                ["ip", "netns", "exec", hd.netns, "ss", "-K", "-t", "-n", "-H", "dst", other.address],
                f"reset host {hd.key}'s connections to host {other.key}",
                text=True,
            )
            killed += len(aborted.stdout.splitlines())
        return killed

    def slow_link(self, key: str, rate: str = SLOW_LINK_RATE) -> None:
        """Shape what the host sends over its lab veth, to every other host (a
        token bucket at `rate`, tc's units)."""
        hd = hostdef(key)
        run(
            ["tc", "-n", hd.netns, "qdisc", "replace", "dev", hd.veth, "root", "tbf", "rate", rate]
            + ["burst", SLOW_LINK_BURST, "latency", SLOW_LINK_LATENCY],
            f"slow host {hd.key}'s link to {rate}",
        )

    def clear_link_shaping(self, key: str) -> None:
        hd = hostdef(key)
        if self.link_shaping(hd.key):
            run(["tc", "-n", hd.netns, "qdisc", "del", "dev", hd.veth, "root"], f"clear host {hd.key}'s link shaping")

    def link_shaping(self, key: str) -> str:
        """The token bucket on the host's veth as tc shows it, "" if none."""
        hd = hostdef(key)
        if not network.netns_exists(hd.key):
            return ""
        shown = probe("tc", "-n", hd.netns, "qdisc", "show", "dev", hd.veth, "root")
        return shown.stdout.strip() if " tbf " in f" {shown.stdout}" else ""

    # ---------------------------------------------------------- the daemons

    def kill_daemon(self, key: str) -> None:
        """SIGKILL the host's libvirtd. Its QEMUs go on running; heal() or start_daemon() starts it again."""
        pid = self._daemon(key)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            if not gateway.wait_for(lambda: not process_alive(pid, "libvirtd"), SIGNAL_TIMEOUT_S, 0.05):
                raise LabError(f"libvirtd {key} (pid {pid}) survived SIGKILL for {SIGNAL_TIMEOUT_S:.0f} s")

    def hang_daemon(self, key: str) -> None:
        """SIGSTOP the host's libvirtd: its socket accepts connections that are never answered."""
        pid = self._daemon(key)
        if pid is None:
            raise LabError(f"libvirtd {key} is not running: nothing to hang")
        os.kill(pid, signal.SIGSTOP)
        if not gateway.wait_for(lambda: daemon_stopped(pid), SIGNAL_TIMEOUT_S, 0.05):
            raise LabError(f"libvirtd {key} (pid {pid}) did not stop on SIGSTOP")

    def unhang_daemon(self, key: str) -> None:
        pid = self._daemon(key)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def daemon_is_hung(self, key: str) -> bool:
        pid = self._daemon(key)
        return pid is not None and daemon_stopped(pid)

    def restart_daemon(self, key: str) -> None:
        """Stop the host's libvirtd gracefully (SIGTERM) and start it again; its QEMUs go on running."""
        self.unhang_daemon(key)
        self._daemons.restart(hostdef(key).key)

    def start_daemon(self, key: str) -> None:
        """Start the host's libvirtd unless it runs and answers (after kill_daemon)."""
        self.unhang_daemon(key)
        self._daemons.ensure(hostdef(key).key)

    # ---------------------------------------------------------- the images filesystem of host B or C

    def fill_disk(self, key: str, leave_bytes: int) -> None:
        """Leave only `leave_bytes` free where the host keeps its images (and
        where a migration with NON_SHARED_DISK copies disks to)."""
        key = hostdef(key).key
        imagefs.fill(self._layout, key, leave_bytes, self._daemons.pid(key))
        log.info("host %s: images filesystem filled, %d bytes free", key, imagefs.free_bytes(self._layout, key))

    def unfill_disk(self, key: str) -> None:
        imagefs.unfill(self._layout, hostdef(key).key)

    def disk_free_bytes(self, key: str) -> int:
        return imagefs.free_bytes(self._layout, hostdef(key).key)

    def images_dir(self, key: str) -> Path:
        """The host's images directory as the host's QEMUs see it, reachable from here
        (through its daemon's mount namespace)."""
        pid = self._daemons.pid(hostdef(key).key)
        if pid is None or not process_alive(pid, "libvirtd"):
            raise LabError(f"libvirtd {key} is not running")
        return Path(f"/proc/{pid}/root{imagefs.IMAGES_DIR}")

    # ---------------------------------------------------------- everything

    def undo_all(self) -> None:
        """Undo every fault on every host; a killed daemon is left to `Lab.up()` to start."""
        for key in HOSTS:
            self.unhang_daemon(key)
            self.restore_link(key)
            self.clear_link_shaping(key)
            self.unfill_disk(key)

    def active(self) -> list[str]:
        """The faults in place now, in words ([] when none)."""
        found = []
        for key in HOSTS:
            if not network.netns_exists(key):
                continue
            if not network.link_is_up(key):
                found.append(f"host {key}'s link is cut")
            if self.link_shaping(key):
                found.append(f"host {key}'s link is shaped")
            if self.daemon_is_hung(key):
                found.append(f"libvirtd {key} is hung")
            if imagefs.filled(self._layout, key):
                found.append(f"host {key}'s images filesystem is filled")
        return found

    # ---------------------------------------------------------- as context managers

    @contextlib.contextmanager
    def link_cut(self, key: str) -> Iterator[None]:
        self.cut_link(key)
        try:
            yield
        finally:
            self.restore_link(key)

    @contextlib.contextmanager
    def link_slowed(self, key: str, rate: str = SLOW_LINK_RATE) -> Iterator[None]:
        self.slow_link(key, rate)
        try:
            yield
        finally:
            self.clear_link_shaping(key)

    @contextlib.contextmanager
    def daemon_hung(self, key: str) -> Iterator[None]:
        self.hang_daemon(key)
        try:
            yield
        finally:
            self.unhang_daemon(key)

    @contextlib.contextmanager
    def daemon_killed(self, key: str) -> Iterator[None]:
        self.kill_daemon(key)
        try:
            yield
        finally:
            self.start_daemon(key)

    @contextlib.contextmanager
    def disk_full(self, key: str, leave_bytes: int) -> Iterator[None]:
        self.fill_disk(key, leave_bytes)
        try:
            yield
        finally:
            self.unfill_disk(key)

    @staticmethod
    def _peers(key: str, peer: str | None) -> list[HostDef]:
        """`peer`'s HostDef, or every host's but `key`'s when `peer` is None."""
        if peer is None:
            return [hd for hd in HOSTS.values() if hd.key != key]
        other = hostdef(peer)
        if other.key == key:
            raise LabError(f"host {key} has no link to itself")
        return [other]

    def _daemon(self, key: str) -> int | None:
        """The host's libvirtd pid if it runs (a recycled pid is never signalled)."""
        pid = self._daemons.pid(hostdef(key).key)
        return pid if pid is not None and process_alive(pid, "libvirtd") else None


def daemon_stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (SIGSTOP): state T in /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (FileNotFoundError, IndexError):
        return False
