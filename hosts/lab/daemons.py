"""The lab's libvirtd daemons, one per host. Each runs `libvirtd --listen`
inside its host's network namespace plus a private mount and UTS namespace, in
which libvirt's own directories are bind-mounted from `<root>/hosts/<X>/`; its
configuration is rendered from files/libvirtd.conf and files/qemu.conf. They are started and
stopped by PID, and warmed once so that no migration pays for QEMU probing."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import shlex
import string
import subprocess
import time
from pathlib import Path

from hosts import gateway

from .layout import BIND_MOUNTS, HOSTS, IMAGES_DIR, LIBVIRT_TCP_PORT, LIBVIRT_TLS_PORT, QEMU, Layout
from .system import LabError, probe, process_alive, stop_processes

log = logging.getLogger(__name__)

LIBVIRTD = "/usr/sbin/libvirtd"
TEMPLATES = Path(__file__).parent / "files"
# libvirt's QEMU capability cache is only valid for the host cpuid it was probed
# with, and cpuid leaf 0x1f carries the id of the CPU that reads it: a daemon
# started on another CPU than last time re-probes QEMU (~4 s per binary). Pinned
# to one CPU, it keeps its cache; libvirt still lets each QEMU use every CPU.
DAEMON_CPU = 0
DAEMON_START_TIMEOUT_S = 30.0  # libvirtd answers in ~1 s; QEMU probing comes later
DAEMON_ANSWER_GRACE_S = 5.0


class Daemons:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._children: dict[str, subprocess.Popen] = {}  # daemons this process started, to reap them

    def pid(self, key: str) -> int | None:
        try:
            return int((self._layout.host_dir(key) / "libvirtd.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self, key: str) -> bool:
        pid = self.pid(key)
        return pid is not None and process_alive(pid, "libvirtd")

    def ensure(self, key: str, restart: bool = False) -> None:
        """Start the daemon unless it runs, answers and keeps its configuration."""
        changed = self._write_configs(key)
        if self.alive(key):
            # Patience before calling a live daemon hung: restarting it would kill
            # the migrations it is running for someone else.
            if not changed and not restart and gateway.wait_for(lambda: self._answers(key), DAEMON_ANSWER_GRACE_S):
                # Another process may have restarted it since this one connected:
                # a pooled connection to it would still pass for alive, and fail.
                _forget_connections()
                return
            log.info(
                "restarting libvirtd %s (%s)", key, "configuration changed" if changed or restart else "not answering"
            )
        # Also when it died: reaps it and drops its PID file. Guests it left running
        # are picked up again by the new daemon.
        self._stop(key)
        self._start(key)

    def restart(self, key: str) -> None:
        """Stop the daemon gracefully (SIGTERM) and start it again; its guests go on running."""
        log.info("restarting libvirtd %s", key)
        self._write_configs(key)
        self._stop(key)
        self._start(key)

    def stop_all(self) -> None:
        for key in HOSTS:
            self.stop_host(key)

    def stop_host(self, key: str) -> None:
        """Stop the daemon, then any QEMU it left behind (a daemon that dies leaves its guests running)."""
        self._stop(key)
        qemu_pids = []
        for pid_file in (self._layout.host_dir(key) / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                qemu_pids.append(int(pid_file.read_text()))
        stop_processes(qemu_pids, "qemu-system")

    def warm(self) -> None:
        """A fresh daemon probes each QEMU binary for ~3.7 s on first use; pay it
        here, every host at once. Host capabilities cover every binary installed
        (qemu-system-x86 brings i386 too): the dashboard's first inventory asks for them."""

        def probe_qemu(key: str) -> None:
            gateway.warm(self._layout.uri(key), emulator=QEMU, arch="x86_64", virttype="qemu")

        with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
            for future in [pool.submit(probe_qemu, key) for key in HOSTS]:
                try:
                    future.result()
                except gateway.GatewayError as exc:
                    raise LabError(f"libvirtd cannot use QEMU: {exc}") from exc

    def ensure_pool(self, key: str) -> None:
        """A `default` dir pool on the images directory (non-shared migration
        creates images only in a pool) and a `shared` one on the shared dir, as
        a site would define on its NFS mount: the wizard sees the disks there
        without probing."""
        gateway.ensure_dir_pool(self._layout.uri(key), "default", IMAGES_DIR)
        gateway.ensure_dir_pool(self._layout.uri(key), "shared", str(self._layout.shared_dir))

    def check_shared_dir(self, key: str) -> None:
        """The shared dir must be the same directory inside each host; it would
        not be if LAB_DIR lay below one of the bind-mounted libvirt directories."""
        layout = self._layout
        layout.shared_dir.mkdir(parents=True, exist_ok=True)
        marker = layout.shared_dir / ".lab-shared-marker"
        marker.write_text(layout.root.as_posix())
        seen = probe("nsenter", "-t", str(self.pid(key)), "-m", "cat", str(marker))
        if seen.stdout != layout.root.as_posix():
            raise LabError(f"host {key} does not see {layout.shared_dir}; put LAB_DIR outside {', '.join(BIND_MOUNTS)}")

    def _write_configs(self, key: str) -> bool:
        """Write libvirtd.conf and qemu.conf; True if either changed. Every byte
        counts, their first line too: a change restarts the running daemons."""
        hd, d = HOSTS[key], self._layout.host_dir(key)
        for sub in ("etc", "run", "lib/images", "lib/qemu", "cache", "log/qemu"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        values = {
            "address": hd.address,
            "listen_tls": int(hd.listen_tls),
            "tcp_port": LIBVIRT_TCP_PORT,
            "tls_port": LIBVIRT_TLS_PORT,
            "tls_dir": self._layout.tls_dir(key),
            "host_uuid": hd.host_uuid,
        }
        changed = False
        for name in ("libvirtd.conf", "qemu.conf"):
            text = string.Template((TEMPLATES / name).read_text()).substitute(values)
            changed = _write_if_changed(d / "etc" / name, text) or changed
        return changed

    def _answers(self, key: str) -> bool:
        return gateway.answers(self._layout.uri(key))

    def _start(self, key: str) -> None:
        hd, d = HOSTS[key], self._layout.host_dir(key)
        for inside in BIND_MOUNTS:
            Path(inside).mkdir(parents=True, exist_ok=True)  # mount points; stay empty out here
        # --rbind: what is mounted below them comes along (the host's images filesystem, imagefs.py).
        mounts = [f"mount --rbind {shlex.quote(str(d / sub))} {inside}" for inside, sub in BIND_MOUNTS.items()]
        # `sh -e`: if a bind mount fails, libvirtd must not start on the machine's own /etc/libvirt.
        # Every step execs the next, so the PID we get is libvirtd's.
        script = "; ".join(
            [
                f"hostname {hd.hostname}",
                *mounts,
                f"exec taskset -c {DAEMON_CPU} {LIBVIRTD} --listen --config /etc/libvirt/libvirtd.conf"
                " --pid-file /run/libvirt/libvirtd.pid",
            ]
        )
        unshare = "unshare --mount --uts --propagation private".split()
        cmd = ["ip", "netns", "exec", hd.netns, *unshare, "sh", "-ec", script]
        with open(d / "libvirtd.stdout", "ab") as out:
            # A session of its own: Ctrl-C in the shell that ran `lab up` must not reach it.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self._children[key] = proc
        (d / "libvirtd.pid").write_text(str(proc.pid))
        _forget_connections()
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not self._answers(key):
            if proc.poll() is not None:
                raise LabError(f"libvirtd on host {key} exited with {proc.returncode}: {self._log_tail(key)}")
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd on host {key} did not answer in {DAEMON_START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        log.info("libvirtd %s: pid %d", key, proc.pid)

    def _stop(self, key: str) -> None:
        pid = self.pid(key)
        if pid is not None:
            stop_processes([pid], "libvirtd")
        child = self._children.pop(key, None)
        if child is not None:
            child.wait()  # reap it, or its zombie would keep the PID
        (self._layout.host_dir(key) / "libvirtd.pid").unlink(missing_ok=True)
        _forget_connections()

    def _log_tail(self, key: str) -> str:
        d = self._layout.host_dir(key)
        lines = []
        for path in (d / "libvirtd.stdout", d / "log" / "libvirtd.log"):
            if path.exists():
                lines += [ln for ln in path.read_text(errors="replace").splitlines() if " info " not in ln][-3:]
        return " / ".join(lines) or "(no log)"


def _forget_connections() -> None:
    # Every pooled connection, not only the unix socket's: this process may reach a
    # restarted daemon by other URIs too (a TLS port), and each would be dead.
    gateway.close_all()


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
