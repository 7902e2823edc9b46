"""The images directories of hosts B and C, each on a small filesystem of its
own, so that a test can fill it (faults.Faults.fill_disk) without filling the
disk the lab lives on.

Each filesystem is a sparse ext4 image, <root>/hosts/<X>/images.ext4, loop-mounted
over <root>/hosts/<X>/lib/images in this namespace and over /var/lib/libvirt/images
in the host's daemon's: a daemon started later gets it through its recursive bind
mount of lib/, a running one has it mounted in. It must be in place before a
migration opens its destination image, since a filesystem mounted over the
directory afterwards would not reach a file QEMU already has open; so it stays
mounted from `lab up` to `lab down`, and filling it only takes its free space.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from .layout import IMAGES_DIR, Layout, say_keys
from .system import LabError, probe, process_alive, run

log = logging.getLogger(__name__)

IMAGES_FS_HOSTS = ("B", "C")
IMAGES_FS_SIZE_MIB = 2048  # sparse: the lab's disk pays only for what is written
FILLER_NAME = ".lab-disk-filler"


def has_own_fs(key: str) -> bool:
    return key in IMAGES_FS_HOSTS


def images_dir(layout: Layout, key: str) -> Path:
    """The host's images directory as this (root) namespace sees it."""
    return layout.host_path(key, IMAGES_DIR)


def mounted(layout: Layout, key: str) -> bool:
    return os.path.ismount(images_dir(layout, key))


def seen_by(layout: Layout, key: str, pid: int) -> bool:
    """Whether process `pid` (the host's libvirtd) sees the images filesystem at IMAGES_DIR."""
    try:
        inside = os.stat(f"/proc/{pid}/root{IMAGES_DIR}")
    except OSError:
        return False
    return mounted(layout, key) and inside.st_dev == os.stat(images_dir(layout, key)).st_dev


def ensure(layout: Layout, key: str, daemon_pid: int | None) -> None:
    """Mount the host's images filesystem here and in its daemon's namespace,
    creating it and moving the directory's files onto it the first time."""
    if not has_own_fs(key):
        return
    if not mounted(layout, key):
        busy = _images_in_use(layout, key)
        if busy:
            # Moving an image a QEMU has open would leave it writing to a file nobody sees.
            log.warning("host %s: %s, so its images stay where they are until the next `lab up`", key, busy)
            return
        _mount(layout, key)
    _move_in(layout, key)
    if daemon_pid is not None and process_alive(daemon_pid, "libvirtd") and not seen_by(layout, key, daemon_pid):
        device = _device(layout, key)
        run(["nsenter", "-t", str(daemon_pid), "-m", "mount", device, IMAGES_DIR], f"mount {device} in host {key}")


def unmount(layout: Layout, key: str) -> None:
    """Unmount it here (the daemon's namespace is gone with the daemon); its files stay in the image."""
    if has_own_fs(key) and mounted(layout, key):
        run(["umount", str(images_dir(layout, key))], f"unmount host {key}'s images filesystem")


def free_bytes(layout: Layout, key: str) -> int:
    st = os.statvfs(images_dir(layout, key))
    return st.f_bavail * st.f_frsize


def fill(layout: Layout, key: str, leave_bytes: int, daemon_pid: int | None) -> None:
    """Take all free space of the host's images filesystem but `leave_bytes`
    (with a filler file, resized when called again)."""
    _check_ready(layout, key, daemon_pid)
    filler = images_dir(layout, key) / FILLER_NAME
    current = filler.stat().st_size if filler.exists() else 0
    target = current + free_bytes(layout, key) - leave_bytes
    if target < 0:
        raise LabError(f"host {key}'s images filesystem has only {current + free_bytes(layout, key)} bytes to give")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if target > current:
            # Allocated, not sparse: the blocks are gone for every writer at once.
            os.posix_fallocate(fd, 0, target)
            # The filler's own extent blocks come out of the space left: give them back.
            shortfall = leave_bytes - free_bytes(layout, key)
            if shortfall > 0:
                os.ftruncate(fd, max(target - shortfall, 0))
        else:
            os.ftruncate(fd, target)
    except OSError as exc:
        raise LabError(f"could not fill host {key}'s images filesystem: {exc}") from exc
    finally:
        os.close(fd)


def unfill(layout: Layout, key: str) -> None:
    if has_own_fs(key) and mounted(layout, key):
        (images_dir(layout, key) / FILLER_NAME).unlink(missing_ok=True)


def filled(layout: Layout, key: str) -> bool:
    return has_own_fs(key) and mounted(layout, key) and (images_dir(layout, key) / FILLER_NAME).exists()


def _check_ready(layout: Layout, key: str, daemon_pid: int | None) -> None:
    if not has_own_fs(key):
        own = say_keys(IMAGES_FS_HOSTS)
        raise LabError(f"host {key}'s images lie on the lab's own disk; only hosts {own} have a filesystem to fill")
    if not mounted(layout, key):
        raise LabError(
            f"host {key}'s images filesystem is not mounted: run `lab up` while no guest on {key} has a disk open"
        )
    if daemon_pid is not None and process_alive(daemon_pid, "libvirtd") and not seen_by(layout, key, daemon_pid):
        raise LabError(f"libvirtd {key} does not see its images filesystem: run `lab up`")


def _mount(layout: Layout, key: str) -> None:
    image = layout.host_dir(key) / "images.ext4"
    target = images_dir(layout, key)
    target.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        partial = image.with_suffix(".partial")
        with open(partial, "wb") as f:
            f.truncate(IMAGES_FS_SIZE_MIB * 2**20)
        # No root reserve (-m 0): QEMU runs as root and would write on into the 5 % ext4 keeps for root.
        run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-L", f"lab-{key}"]
            + [str(partial)],
            f"create host {key}'s images filesystem",
        )
        partial.rename(image)
    # Files already in the directory (the first time: read-only images, copies)
    # go onto the new filesystem. A staging directory on the lab's disk keeps
    # them while the mount hides the directory; ensure() finishes a move a crash interrupted.
    staging = _staging(layout, key)
    staging.mkdir(exist_ok=True)
    for entry in target.iterdir():
        entry.rename(staging / entry.name)
    run(["mount", "-o", "loop", str(image), str(target)], f"mount host {key}'s images filesystem")
    lost_found = target / "lost+found"
    if lost_found.is_dir() and not any(lost_found.iterdir()):
        lost_found.rmdir()  # libvirt's pool would list it as a volume
    log.info("host %s: images on their own %d MiB filesystem", key, IMAGES_FS_SIZE_MIB)


def _staging(layout: Layout, key: str) -> Path:
    return layout.host_dir(key) / "images.moving"


def _move_in(layout: Layout, key: str) -> None:
    staging = _staging(layout, key)
    if not staging.is_dir():
        return
    for entry in sorted(staging.iterdir()):
        run(
            ["cp", "-a", "--sparse=always", str(entry), str(images_dir(layout, key))],
            f"move {entry} onto the images filesystem",
        )
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    staging.rmdir()


def _device(layout: Layout, key: str) -> str:
    # The loop device already behind the mount: a second loop device on the same
    # image file would be a second, independent writer of one ext4 filesystem.
    shown = probe("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(images_dir(layout, key)))
    device = shown.stdout.strip().splitlines()[-1] if shown.stdout.strip() else ""
    if not device.startswith("/dev/"):
        raise LabError(f"cannot tell which device holds host {key}'s images filesystem: {shown.stderr.strip()}")
    return device


def _images_in_use(layout: Layout, key: str) -> str:
    """Which of the host's QEMUs has a file of its images directory open, in words ("" if none)."""
    for pid_file in (layout.host_dir(key) / "run" / "qemu").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if not process_alive(pid, "qemu-system"):
                continue
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(IMAGES_DIR + "/"):
                        return f"guest {pid_file.stem} has {os.readlink(fd)} open"
    return ""
