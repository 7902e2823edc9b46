"""Where the lab's things are: its three hosts, the directories under the lab's
root that each host sees as libvirt's own, and the URIs that reach them.
Nothing here touches the machine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .system import LabError

REPO_DIR = Path(__file__).resolve().parents[2]
QEMU = "/usr/bin/qemu-system-x86_64"
LIBVIRT_TCP_PORT = 16509  # libvirt's defaults, so URIs need no port
LIBVIRT_TLS_PORT = 16514

# In-host directory -> subdirectory of <root>/hosts/<X> bind-mounted over it.
BIND_MOUNTS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}
IMAGES_DIR = "/var/lib/libvirt/images"  # in-host path; the `default` pool covers it
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


@dataclass(frozen=True)
class HostDef:
    key: str  # "A", "B" or "C"
    netns: str
    veth: str
    address: str
    hostname: str
    host_uuid: str  # must differ per host, else "Attempt to migrate guest to the same host"
    listen_tls: bool


HOSTS: dict[str, HostDef] = {
    "A": HostDef("A", "lvA", "vA", "10.77.0.1", "hostA", "00000000-0000-4000-8000-00000000000a", False),
    "B": HostDef("B", "lvB", "vB", "10.77.0.2", "hostB", "00000000-0000-4000-8000-00000000000b", True),
    "C": HostDef("C", "lvC", "vC", "10.77.0.3", "hostC", "00000000-0000-4000-8000-00000000000c", True),
}
TLS_HOSTS = tuple(key for key, hd in HOSTS.items() if hd.listen_tls)


def say_keys(keys: Iterable[str], last: str = "and") -> str:
    """Host keys in words: "A", "A and B", "A, B or C"."""
    keys = list(keys)
    return ", ".join(keys[:-1]) + f" {last} {keys[-1]}" if len(keys) > 1 else "".join(keys)


def hostdef(host: str) -> HostDef:
    try:
        return HOSTS[host.upper()]
    except (KeyError, AttributeError):
        raise LabError(f"unknown lab host {host!r}: use {say_keys([repr(k) for k in HOSTS], 'or')}") from None


def default_root() -> Path:
    """settings.LAB_DIR when Django is configured, else <repo>/.lab."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        configured = getattr(settings, "LAB_DIR", None)
    except ImproperlyConfigured:  # no settings module (a plain script): the lab works without Django
        configured = None
    return Path(configured) if configured else REPO_DIR / ".lab"


class Layout:
    """The lab's paths under one root. `<root>/shared` plays NFS: it lies
    outside every bind mount, so every host sees it at the same absolute path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def shared_dir(self) -> Path:
        return self.root / "shared"

    @property
    def kernel_path(self) -> Path:
        return self.cache_dir / "vmlinuz"

    @property
    def initrd_path(self) -> Path:
        return self.cache_dir / "initrd.gz"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / hostdef(host).key

    def tls_dir(self, host: str) -> Path:
        """The host's migrate_tls_x509_cert_dir, also libvirtd's TLS files."""
        return self.host_dir(host) / "pki"

    def host_path(self, host: str, path: str | Path) -> Path:
        """Where a path as seen inside `host` lives in this (root) namespace."""
        path = Path(path)
        for inside, sub in BIND_MOUNTS.items():
            if path == Path(inside) or Path(inside) in path.parents:
                return self.host_dir(host) / sub / path.relative_to(inside)
        return path

    def serial_log(self, name: str, host: str) -> Path:
        return self.host_path(host, f"{SERIAL_LOG_DIR}/{name}-serial.log")

    def uri(self, host: str) -> str:
        return f"qemu+unix:///system?socket={self.host_dir(host)}/run/libvirt-sock"

    def peer_uri(self, host: str) -> str:
        """How another host's libvirtd reaches this one (peer-to-peer migration)."""
        return f"qemu+tcp://{hostdef(host).address}/system"

    def tls_uri(self, host: str) -> str:
        hd = hostdef(host)
        if not hd.listen_tls:
            raise LabError(f"lab host {hd.key} does not listen for TLS; only hosts {say_keys(TLS_HOSTS)} do")
        return f"qemu+tls://{hd.address}/system"

    def migration_address(self, host: str) -> str:
        return hostdef(host).address
