"""The Debian packages and the user the lab needs, installed when missing."""

from __future__ import annotations

import logging
import os
import subprocess

from .system import LabError, probe, run

log = logging.getLogger(__name__)

# Not libvirt-daemon-system: it pulls in systemd.
PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "cpio",
    "iproute2",
    "e2fsprogs",  # mkfs.ext4, for the images filesystems of hosts B and C (imagefs.py)
)


def ensure_packages() -> None:
    # dpkg-query exits 1 when a package is unknown; the output still lists the others.
    result = probe("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *PACKAGES)
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    missing = [p for p in PACKAGES if p not in installed]
    if missing:
        log.info("installing %s", " ".join(missing))
        apt(["install", "-y", "-q", "--no-install-recommends", *missing], f"install {' '.join(missing)}")
    # The QEMU driver resolves this user at start-up even with user = "root" in
    # qemu.conf; its package (libvirt-daemon-system) would create it, but pulls in systemd.
    if probe("getent", "group", "libvirt-qemu").returncode != 0:
        run(["groupadd", "-r", "libvirt-qemu"], "create group libvirt-qemu")
    if probe("getent", "passwd", "libvirt-qemu").returncode != 0:
        useradd = "useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu"
        run(useradd.split(), "create user libvirt-qemu")


def apt(args: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """apt-get, refreshing the package lists once if they are stale or missing."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return run(["apt-get", *args], what, env=env, **kwargs)
    except LabError:
        run(["apt-get", "update", "-q"], "update the package lists")
        return run(["apt-get", *args], what, env=env, **kwargs)
