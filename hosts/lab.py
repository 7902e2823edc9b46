"""Two real libvirt hosts on this machine (the lab), for development, tests and demos.

Each host is a network namespace (lvA / lvB, joined by a veth pair 10.77.0.1 <->
10.77.0.2) plus a private mount and UTS namespace in which libvirt's own
directories are bind-mounted from ``<root>/hosts/<X>/``; in it runs a plain
``libvirtd --listen``. The dashboard (root namespace) reaches each daemon through
its unix socket; peer-to-peer migrations go daemon to daemon over the veth.
``<root>/shared`` plays NFS: it lies outside every bind mount, so both hosts see
it at the same absolute path. Guests are TCG (no usable KVM here) and boot a
Debian kernel with a busybox initramfs that dirties memory at a chosen rate.
See docs/lab.md in the shared docs for the facts behind the choices made here.

Everything the lab starts is recorded by PID and stopped by PID (or by
membership of the lab's namespaces), never by process name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import ipaddress
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import gateway
from .gateway import STATE_NAMES, wait_for

if TYPE_CHECKING:
    from .models import Host

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parent.parent

# Debian packages the lab needs. Not libvirt-daemon-system: it pulls in systemd.
PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "cpio",
    "iproute2",
)
BUSYBOX = Path("/bin/busybox")  # from busybox-static: the initramfs has no libc
LIBVIRTD = "/usr/sbin/libvirtd"
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

# The root namespace reaches B's TLS port through one more veth into lvB plus a
# /32 route to B's address (10.77.0.x exists only inside the namespaces).
ROOT_VETH, ROOT_VETH_PEER = "vR", "vRB"
ROOT_VETH_ADDR, ROOT_VETH_PEER_ADDR = "10.78.0.1/30", "10.78.0.2/30"

# libvirt's QEMU capability cache is only valid for the host cpuid it was probed
# with, and cpuid leaf 0x1f carries the id of the CPU that reads it: a daemon
# started on another CPU than last time re-probes QEMU (~4 s per binary). Pinned
# to one CPU, it keeps its cache; libvirt still lets each QEMU use every CPU.
DAEMON_CPU = 0
DAEMON_START_TIMEOUT_S = 30.0  # libvirtd answers in ~1 s; QEMU probing comes later
DAEMON_ANSWER_GRACE_S = 5.0
PROCESS_STOP_TIMEOUT_S = 10.0
BOOT_TIMEOUT_S = 120.0  # one TCG guest boots in 7-8 s; four share two cores
TICK_TIMEOUT_S = 15.0  # guests print a tick every second
CERT_VALID_DAYS = 3650
GUEST_UUID_NAMESPACE = uuid.UUID("6c61622d-6775-6573-7473-000000000000")

# The guest's /init. Kernel command line: dirty_mb=N (MiB rewritten per round),
# dirty_sleep=S (seconds between rounds).
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm
mount -t tmpfs -o size=90% tmpfs /dev/shm
dirty_mb=0
dirty_sleep=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dirty_mb=*) dirty_mb=${arg#dirty_mb=} ;;
    dirty_sleep=*) dirty_sleep=${arg#dirty_sleep=} ;;
  esac
done
now() { cut -d' ' -f1 /proc/uptime; }
echo "GUEST-READY uptime=$(now) dirty_mb=$dirty_mb dirty_sleep=$dirty_sleep"
if [ "$dirty_mb" -gt 0 ]; then
  # QEMU's page-sampling dirty rate compares page hashes at the start and the
  # end of its window, so content that comes back reads as clean: with two
  # buffers copied in turn, a 2-s window over two rounds measured ~0. Instead
  # each round copies a view of one random buffer shifted by another 64 KiB:
  # the same content returns only after 64 rounds (64 x 64 KiB: the 4 MiB extra).
  dd if=/dev/urandom of=/dev/shm/src bs=1M count=$((dirty_mb + 4)) 2>/dev/null
  echo "GUEST-DIRTY-START uptime=$(now)"
  (
    round=0
    while true; do
      dd if=/dev/shm/src of=/dev/shm/buf bs=64k count=$((dirty_mb * 16)) skip=$((round % 64)) conv=notrunc 2>/dev/null
      round=$((round + 1))
      [ $((round % 10)) -eq 0 ] && echo "round $round uptime=$(now)"
      sleep $dirty_sleep
    done
  ) &
fi
# `read` is a shell builtin: no fork per tick, so an idle guest stays nearly clean.
while true; do read -r up _ </proc/uptime; echo "tick uptime=$up"; sleep 1; done
"""


class LabError(Exception):
    """Something the lab could not do, in plain words."""


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class HostDef:
    key: str  # "A" or "B"
    netns: str
    veth: str
    address: str
    hostname: str
    host_uuid: str  # must differ per host, else "Attempt to migrate guest to the same host"
    listen_tls: bool


HOSTS: dict[str, HostDef] = {
    "A": HostDef("A", "lvA", "vA", "10.77.0.1", "hostA", "00000000-0000-4000-8000-00000000000a", False),
    "B": HostDef("B", "lvB", "vB", "10.77.0.2", "hostB", "00000000-0000-4000-8000-00000000000b", True),
}
LAB_PREFIX_LEN = 24


@dataclass(frozen=True)
class DiskSpec:
    """A guest disk. `shared` disks live in the lab's shared directory (both
    hosts see them); the others in the host's own /var/lib/libvirt/images."""

    target: str  # vda, vdb, ...
    size_mib: int = 64
    format: str = "qcow2"  # or "raw"
    shared: bool = False
    readonly: bool = False
    shareable: bool = False


@dataclass(frozen=True)
class GuestSpec:
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


@dataclass(frozen=True)
class LabPki:
    """Certificates the lab made, for tests that upload or use them."""

    ca_cert: Path
    client_cert: Path
    client_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    foreign_ca_cert: Path  # a CA the hosts do not trust
    foreign_client_cert: Path
    foreign_client_key: Path
    client_pkipath: Path  # cacert.pem, clientcert.pem, clientkey.pem: `?pkipath=` of qemu+tls URIs


@dataclass(frozen=True)
class GuestState:
    name: str
    state: str


@dataclass(frozen=True)
class HostStatus:
    key: str
    hostname: str
    address: str
    netns: str
    netns_exists: bool
    daemon_pid: int | None
    daemon_alive: bool
    answering: bool
    guests: tuple[GuestState, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.netns_exists and self.daemon_alive and self.answering


@dataclass(frozen=True)
class LabStatus:
    root: Path
    hosts: dict[str, HostStatus]
    tls_route: bool

    @property
    def healthy(self) -> bool:
        return self.tls_route and all(h.healthy for h in self.hosts.values())

    @property
    def down(self) -> bool:
        return not self.tls_route and not any(h.netns_exists or h.daemon_alive for h in self.hosts.values())

    def describe(self) -> str:
        verdict = "up" if self.healthy else "down" if self.down else "half up (run `lab up` to repair)"
        lines = [f"lab at {self.root}: {verdict}"]
        for h in self.hosts.values():
            daemon = "no libvirtd"
            if h.daemon_pid is not None:
                daemon = f"libvirtd pid {h.daemon_pid} " + (
                    ("answering" if h.answering else "NOT answering") if h.daemon_alive else "DEAD"
                )
            lines.append(
                f"  host {h.key} ({h.hostname}, {h.address}): netns {h.netns} "
                f"{'present' if h.netns_exists else 'MISSING'}, {daemon}"
            )
            for g in h.guests:
                lines.append(f"    {g.name:<12} {g.state}")
        lines.append(f"  route from this namespace to B's TLS port: {'yes' if self.tls_route else 'no'}")
        return "\n".join(lines)


# ------------------------------------------------------------------ helpers


def _run(cmd: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure raise LabError saying what we were doing."""
    log.debug("run: %s", shlex.join(cmd))
    kwargs.setdefault("capture_output", True)
    try:
        result = subprocess.run(list(cmd), check=False, **kwargs)
    except FileNotFoundError as exc:
        raise LabError(f"could not {what}: {cmd[0]} is not installed") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr or ""
        detail = stderr.strip().splitlines()[-3:] if stderr else []
        raise LabError(f"could not {what}: `{shlex.join(cmd)}` exited {result.returncode}: {' / '.join(detail)}")
    return result


def _probe(*cmd: str) -> subprocess.CompletedProcess:
    """Run a query whose exit status is part of the answer (no exception)."""
    return subprocess.run(cmd, check=False, capture_output=True, text=True)


def _process_alive(pid: int, expected: str) -> bool:
    """True if `pid` runs and its command line contains `expected` (a recycled
    PID must never be killed). Zombies count as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and expected.encode() in cmdline


def _stop_processes(pids: Sequence[int], expected: str) -> None:
    """SIGTERM, wait, then SIGKILL the given PIDs (those still matching)."""
    targets = [p for p in pids if _process_alive(p, expected)]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_for(lambda: not any(_process_alive(p, expected) for p in targets), PROCESS_STOP_TIMEOUT_S, 0.05):
        return
    for pid in targets:
        if _process_alive(pid, expected):
            log.warning("pid %d (%s) ignored SIGTERM; killing it", pid, expected)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_in_netns(netns: str) -> list[int]:
    """Every process living in the named network namespace."""
    try:
        ns = os.stat(f"/run/netns/{netns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(entry / "ns" / "net")
                if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
                    pids.append(int(entry.name))
    return pids


def _destroy(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):  # it may have stopped meanwhile
        dom.destroy()


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue(
    cn: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    usages: Sequence[x509.ObjectIdentifier] = (),
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    days: tuple[int, int] = (-1, CERT_VALID_DAYS),
) -> x509.Certificate:
    """A certificate valid from now+days[0] to now+days[1]; issuer None = self-signed CA."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if is_ca else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                key_encipherment=not is_ca,  # libvirt checks both on server and client certs
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key if is_ca else issuer[1], hashes.SHA256())


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ------------------------------------------------------------------ the lab


def default_root() -> Path:
    """settings.LAB_DIR when Django is configured, else <repo>/.lab."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        configured = getattr(settings, "LAB_DIR", None)
    except ImproperlyConfigured:  # no settings module (a plain script): the lab works without Django
        configured = None
    return Path(configured) if configured else REPO_DIR / ".lab"


class Lab:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_root()
        self._specs: dict[str, GuestSpec] = {g.name: g for g in DEMO_GUESTS}
        self._conns: dict[str, libvirt.virConnect] = {}
        self._children: dict[str, subprocess.Popen] = {}  # daemons this process started, to reap them

    # ---------------------------------------------------------- paths and URIs

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

    @property
    def pki(self) -> LabPki:
        up = self.root / "pki-upload"
        return LabPki(
            ca_cert=up / "ca-cert.pem",
            client_cert=up / "client-cert.pem",
            client_key=up / "client-key.pem",
            expired_client_cert=up / "expired-client-cert.pem",
            expired_client_key=up / "expired-client-key.pem",
            foreign_ca_cert=up / "other-ca-cert.pem",
            foreign_client_cert=up / "other-ca-client-cert.pem",
            foreign_client_key=up / "other-ca-client-key.pem",
            client_pkipath=up / "pkipath",
        )

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / _hostdef(host).key

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

    def uri(self, host: str) -> str:
        return f"qemu+unix:///system?socket={self.host_dir(host)}/run/libvirt-sock"

    def peer_uri(self, host: str) -> str:
        """How the other host's libvirtd reaches this one (peer-to-peer migration)."""
        return f"qemu+tcp://{_hostdef(host).address}/system"

    def tls_uri(self, host: str) -> str:
        hd = _hostdef(host)
        if not hd.listen_tls:
            raise LabError(f"lab host {hd.key} does not listen for TLS; only host B does")
        return f"qemu+tls://{hd.address}/system"

    def migration_address(self, host: str) -> str:
        return _hostdef(host).address

    def serial_log(self, name: str, host: str) -> Path:
        return self.host_path(host, f"{SERIAL_LOG_DIR}/{name}-serial.log")

    def image_path(self, guest: str, disk: DiskSpec) -> Path:
        """The disk's path as libvirt sees it (the same on both hosts)."""
        ext = "qcow2" if disk.format == "qcow2" else "img"
        base = self.shared_dir if disk.shared else Path(IMAGES_DIR)
        return base / f"{guest}-{disk.target}.{ext}"

    def conn(self, host: str) -> libvirt.virConnect:
        """A cached connection to the host's daemon (reopened when it died)."""
        key = _hostdef(host).key
        conn = self._conns.get(key)
        if conn is not None:
            try:
                conn.getLibVersion()
                return conn
            except libvirt.libvirtError:
                self._conns.pop(key, None)
        try:
            conn = libvirt.open(self.uri(key))
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot reach lab host {key}'s libvirtd ({exc}); run `manage.py lab up`") from exc
        self._conns[key] = conn
        return conn

    # ---------------------------------------------------------- up / down / status

    @staticmethod
    def cannot_run_reason() -> str | None:
        """Why this machine cannot run the lab, or None."""
        if os.geteuid() != 0:
            return (
                f"the lab needs root (it creates network namespaces and runs libvirtd); running as uid {os.geteuid()}"
            )
        for tool in ("ip", "unshare", "nsenter", "taskset", "dpkg-query"):
            if shutil.which(tool) is None:
                return f"the lab needs `{tool}`, which is not installed"
        probe = _probe("unshare", "--net", "--mount", "--uts", "true")
        if probe.returncode != 0:
            return f"this machine does not allow network/mount namespaces: {probe.stderr.strip()}"
        return None

    def up(self, start_guests: bool = True) -> LabStatus:
        """Bring the lab up, or repair whatever part of it is missing."""
        reason = self.cannot_run_reason()
        if reason:
            raise LabError(reason)
        with self._locked():
            with self._step("packages"):
                self._ensure_packages()
            with self._step("guest kernel + initramfs"):
                self._ensure_kernel()
                self._ensure_initrd()
            with self._step("certificates"):
                pki_changed = self._ensure_pki()
            with self._step("network"):
                self._ensure_network()
            with self._step("libvirtd A and B"):
                for key in HOSTS:
                    self._ensure_daemon(key, restart=pki_changed)
            with self._step("route to B's TLS port"):
                self._ensure_root_route()
            with self._step("warm daemons (QEMU capabilities)"):
                self._warm()
            with self._step("storage pools, shared dir"):
                for key in HOSTS:
                    self._ensure_pool(key)
                    self._check_shared_dir(key)
            with self._step("demo guests defined"):
                for spec in DEMO_GUESTS:
                    if self.where(spec.name) is None:
                        self._define(spec, "A")
            if start_guests:
                with self._step("demo guests booted"):
                    self._start_demo_guests()
        return self.status()

    def down(self) -> None:
        """Stop everything the lab started and remove its namespaces and links."""
        with self._locked():
            with self._step("destroy guests"):
                doms = []
                for key in HOSTS:
                    with contextlib.suppress(LabError, libvirt.libvirtError):  # a dead daemon: its QEMUs go below
                        doms += self.conn(key).listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                # Each destroy waits ~2 s for a TCG QEMU to exit: side by side they cost one wait.
                with concurrent.futures.ThreadPoolExecutor(max(len(doms), 1)) as pool:
                    list(pool.map(_destroy, doms))
            with self._step("stop daemons and guest processes"):
                for key in HOSTS:
                    self._stop_host(key)
            with self._step("remove namespaces and links"):
                self._remove_network()

    def status(self) -> LabStatus:
        hosts = {}
        for key, hd in HOSTS.items():
            pid = self._daemon_pid(key)
            alive = pid is not None and _process_alive(pid, "libvirtd")
            answering, guests = False, ()
            if alive:
                try:
                    doms = self.conn(key).listAllDomains(0)
                    guests = tuple(
                        GuestState(d.name(), STATE_NAMES.get(d.state()[0], "unknown"))
                        for d in sorted(doms, key=lambda d: d.name())
                    )
                    answering = True
                except (LabError, libvirt.libvirtError):
                    pass
            hosts[key] = HostStatus(
                key, hd.hostname, hd.address, hd.netns, self._netns_exists(key), pid, alive, answering, guests
            )
        return LabStatus(self.root, hosts, self._root_route_exists())

    # ---------------------------------------------------------- guests

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
        """Define (or redefine) a guest on `host`, creating its disk images.
        `interfaces` are <interface> elements as XML; the default is no NIC."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise LabError(f"guest name {name!r}: use letters, digits, '-', '_' and '.'")
        spec = GuestSpec(name, memory_mib, dirty_mb, dirty_sleep, tuple(disks), tuple(interfaces))
        self._specs[name] = spec
        self._define(spec, host)
        return spec

    def reset_guest(self, name: str) -> None:
        """Put the guest back on host A, freshly booted (dirty loop running)."""
        self.park_guest(name)
        self.serial_log(name, "A").unlink(missing_ok=True)
        self.conn("A").lookupByName(name).create()
        self.wait_booted(name, "A")

    def park_guest(self, name: str) -> None:
        """Stop the guest and leave it defined, shut off, on host A only (the
        layout tests start from); B's copies of its local images are deleted."""
        dom_b = self._lookup("B", name)
        xml_b = None
        if dom_b is not None:
            xml_b = dom_b.XMLDesc(0)
            if dom_b.isActive():
                _destroy(dom_b)
            if dom_b.isPersistent():
                dom_b.undefine()
            self._remove_local_copies("B", xml_b)
        dom_a = self._lookup("A", name)
        if dom_a is not None and dom_a.isActive():
            _destroy(dom_a)
        if name in self._specs:
            self._define(self._specs[name], "A")  # also undoes XML drift (pinning, ...) left by a test
        elif dom_a is None:
            if xml_b is None:
                raise LabError(f"guest {name!r} is defined on neither host; define_guest() it first")
            self.conn("A").defineXML(xml_b)

    def stop_guest(self, name: str) -> None:
        """Destroy the guest wherever it runs (its definitions stay)."""
        for key in HOSTS:
            dom = self._lookup(key, name)
            if dom is not None and dom.isActive():
                _destroy(dom)

    def remove_guest(self, name: str) -> None:
        """Destroy and undefine the guest on both hosts (a benchmark's own guests)."""
        for key in HOSTS:
            dom = self._lookup(key, name)
            if dom is None:
                continue
            xml = dom.XMLDesc(0)
            if dom.isActive():
                _destroy(dom)
            if dom.isPersistent():
                dom.undefine()
            if key == "B":
                self._remove_local_copies("B", xml)
        self._specs.pop(name, None)

    # ---------------------------------------------------------- host networking

    def add_bridge(self, host: str, name: str) -> None:
        """A Linux bridge on one lab host only (for guests whose NIC needs it)."""
        hd = _hostdef(host)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", name):
            raise LabError(f"bridge name {name!r}: at most 15 letters, digits, '-', '_' or '.'")
        if _probe("ip", "-n", hd.netns, "link", "show", "dev", name).returncode != 0:
            _run(["ip", "-n", hd.netns, "link", "add", name, "type", "bridge"], f"create bridge {name} on {hd.key}")
        _run(["ip", "-n", hd.netns, "link", "set", name, "up"], f"bring up bridge {name} on {hd.key}")

    def remove_bridge(self, host: str, name: str) -> None:
        hd = _hostdef(host)
        if _probe("ip", "-n", hd.netns, "link", "show", "dev", name).returncode == 0:
            _run(["ip", "-n", hd.netns, "link", "del", name], f"delete bridge {name} on {hd.key}")

    def where(self, name: str) -> str | None:
        """The host the guest runs on, else the one it is defined on, else None."""
        found = {key: self._lookup(key, name) for key in HOSTS}
        for key, dom in found.items():
            if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                return key
        for key, dom in found.items():
            if dom is not None and dom.isActive():
                return key
        return next((key for key, dom in found.items() if dom is not None), None)

    def wait_booted(self, name: str, host: str, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Wait until the guest's /init runs (and its dirty loop, if any); seconds waited."""
        log_path = self.serial_log(name, host)
        start = time.monotonic()

        def booted() -> bool:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            ready = re.search(r"GUEST-READY .*dirty_mb=(\d+)", text)
            return bool(ready) and (ready.group(1) == "0" or "GUEST-DIRTY-START" in text)

        while not booted():
            dom = self._lookup(host, name)
            if dom is None or not dom.isActive():
                raise LabError(f"guest {name} is not running on host {host}; serial log: {self._log_tail(log_path)}")
            if time.monotonic() - start > timeout:
                raise LabError(
                    f"guest {name} did not boot on host {host} in {timeout:.0f} s: {self._log_tail(log_path)}"
                )
            time.sleep(0.2)
        return time.monotonic() - start

    def wait_tick(self, name: str, host: str, timeout: float = TICK_TIMEOUT_S) -> None:
        """Wait for a new `tick` line on the guest's serial console on `host`:
        proof that the guest runs there (after a migration, for instance)."""
        log_path = self.serial_log(name, host)

        def ticks() -> int:
            return log_path.read_text(errors="replace").count("tick ") if log_path.exists() else 0

        before = ticks()
        if not wait_for(lambda: ticks() > before, timeout):
            raise LabError(
                f"guest {name} printed no tick on host {host} in {timeout:.0f} s: {self._log_tail(log_path)}"
            )

    # ---------------------------------------------------------- Django

    def register(self) -> list[Host]:
        """Create or update the two lab hosts in the database and read their inventory."""
        from .inventory import refresh_host
        from .models import Host

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

    # ---------------------------------------------------------- internals: steps

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
        yield
        log.info("%-36s %6.2f s", label, time.monotonic() - start)

    def _ensure_packages(self) -> None:
        # dpkg-query exits 1 when a package is unknown; the output still lists the others.
        result = _probe("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *PACKAGES)
        installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
        missing = [p for p in PACKAGES if p not in installed]
        if missing:
            log.info("installing %s", " ".join(missing))
            self._apt(["install", "-y", "-q", "--no-install-recommends", *missing], f"install {' '.join(missing)}")
        # The QEMU driver resolves this user at start-up even with user = "root" in
        # qemu.conf; its package (libvirt-daemon-system) would create it, but pulls in systemd.
        if _probe("getent", "group", "libvirt-qemu").returncode != 0:
            _run(["groupadd", "-r", "libvirt-qemu"], "create group libvirt-qemu")
        if _probe("getent", "passwd", "libvirt-qemu").returncode != 0:
            useradd = "useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu"
            _run(useradd.split(), "create user libvirt-qemu")

    @staticmethod
    def _apt(args: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
        """apt-get, refreshing the package lists once if they are stale or missing."""
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            return _run(["apt-get", *args], what, env=env, **kwargs)
        except LabError:
            _run(["apt-get", "update", "-q"], "update the package lists")
            return _run(["apt-get", *args], what, env=env, **kwargs)

    def _ensure_kernel(self) -> None:
        if self.kernel_path.exists():
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        depends = _run(["apt-cache", "depends", "linux-image-amd64"], "look up Debian's kernel package", text=True)
        match = re.search(r"Depends: (linux-image-\d\S*)", depends.stdout)
        if not match:
            raise LabError("could not tell which kernel linux-image-amd64 depends on (run apt-get update?)")
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            os.chmod(tmp, 0o755)  # apt's download user must be able to write here
            self._apt(["download", "-q", match.group(1)], f"download {match.group(1)}", cwd=tmp)
            deb = next(Path(tmp).glob("*.deb"))
            # Stream the package's file tree: the kernel is ~8 MB, its modules ~400 MB.
            with (
                # stderr: dpkg-deb complains of the broken pipe when we stop reading at the kernel.
                subprocess.Popen(
                    ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                ) as proc,
                tarfile.open(fileobj=proc.stdout, mode="r|") as tar,
            ):
                kernel = next((m for m in tar if m.name.startswith("./boot/vmlinuz-")), None)
                data = tar.extractfile(kernel).read() if kernel else None
            if data is None:
                raise LabError(f"{deb.name} contains no /boot/vmlinuz-*")
            partial = self.kernel_path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.rename(self.kernel_path)
        log.info("guest kernel: %s", kernel.name.removeprefix("./boot/"))

    def _ensure_initrd(self) -> None:
        """The busybox initramfs; rebuilt whenever INIT_SCRIPT or busybox change."""
        stamp = hashlib.sha256(INIT_SCRIPT.encode() + BUSYBOX.read_bytes()).hexdigest()
        stamp_file = self.cache_dir / "initrd.sha256"
        if self.initrd_path.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            return
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp)
            for sub in ("bin", "proc", "sys", "dev", "tmp"):
                (tree / sub).mkdir()
            shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
            (tree / "init").write_text(INIT_SCRIPT)
            (tree / "init").chmod(0o755)
            names = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*")))
            archive = _run(
                ["cpio", "-o", "-H", "newc", "--quiet"], "pack the initramfs", cwd=tree, input=names.encode()
            )
        # Renamed into place: a guest starting meanwhile must not read half a file.
        partial = self.initrd_path.with_suffix(".partial")
        partial.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
        partial.rename(self.initrd_path)
        stamp_file.write_text(stamp)

    def _ensure_pki(self) -> bool:
        """The lab CA, a certificate per host and the files tests upload. True if (re)made."""
        ca_dir, pki = self.root / "pki", self.pki
        host_files = [self.tls_dir(k) / f for k in HOSTS for f in ("ca-cert.pem", "server-cert.pem", "client-key.pem")]
        wanted = [ca_dir / "ca-key.pem", pki.foreign_client_key, pki.client_pkipath / "clientkey.pem", *host_files]
        if all(p.exists() for p in wanted):
            return False
        for d in (ca_dir, pki.client_pkipath, *(self.tls_dir(k) for k in HOSTS)):
            d.mkdir(parents=True, exist_ok=True)
        ca_key = _new_key()
        ca = _issue("lab CA", ca_key, None)
        ca_pem = _cert_pem(ca)
        files: dict[Path, bytes] = {ca_dir / "ca-cert.pem": ca_pem, ca_dir / "ca-key.pem": _key_pem(ca_key)}
        for key, hd in HOSTS.items():
            # One certificate per host for both roles: QEMU's migration server and
            # client, and libvirtd's TLS listener. The SAN must name the address
            # the peer connects to (the migration address).
            host_key = _new_key()
            usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
            cert = _cert_pem(
                _issue(hd.hostname, host_key, (ca, ca_key), usages=usages, ips=[hd.address], dns=[hd.hostname])
            )
            d = self.tls_dir(key)
            files |= {d / "ca-cert.pem": ca_pem, d / "server-cert.pem": cert, d / "client-cert.pem": cert}
            files |= {d / "server-key.pem": _key_pem(host_key), d / "client-key.pem": _key_pem(host_key)}
        client_key = _new_key()
        client_usage = (ExtendedKeyUsageOID.CLIENT_AUTH,)
        client = _cert_pem(_issue("lab-dashboard", client_key, (ca, ca_key), usages=client_usage))
        expired = _cert_pem(
            _issue("lab-dashboard-expired", client_key, (ca, ca_key), usages=client_usage, days=(-30, -1))
        )
        other_key, other_client_key = _new_key(), _new_key()
        other_ca = _issue("some other CA", other_key, None)
        foreign = _cert_pem(_issue("lab-dashboard", other_client_key, (other_ca, other_key), usages=client_usage))
        files |= {
            pki.ca_cert: ca_pem,
            pki.client_cert: client,
            pki.client_key: _key_pem(client_key),
            pki.expired_client_cert: expired,
            pki.expired_client_key: _key_pem(client_key),
            pki.foreign_ca_cert: _cert_pem(other_ca),
            pki.foreign_client_cert: foreign,
            pki.foreign_client_key: _key_pem(other_client_key),
            pki.client_pkipath / "cacert.pem": ca_pem,
            pki.client_pkipath / "clientcert.pem": client,
            pki.client_pkipath / "clientkey.pem": _key_pem(client_key),
        }
        for path, data in files.items():
            path.write_bytes(data)
            path.chmod(0o600 if path.name.endswith("key.pem") else 0o644)
        return True

    # ---------------------------------------------------------- internals: network

    def _netns_exists(self, key: str) -> bool:
        return Path(f"/run/netns/{HOSTS[key].netns}").exists()

    def _network_ok(self) -> bool:
        for hd in HOSTS.values():
            if not self._netns_exists(hd.key):
                return False
            shown = _probe("ip", "-n", hd.netns, "-o", "addr", "show", "dev", hd.veth)
            # LOWER_UP: both ends of the veth pair are up.
            if f"inet {hd.address}/" not in shown.stdout or "LOWER_UP" not in _ip_link_flags(hd.netns, hd.veth):
                return False
        return True

    def _ensure_network(self) -> None:
        if self._network_ok():
            return
        if any(self._netns_exists(k) for k in HOSTS):
            log.info("network incomplete: rebuilding it")
        # A veth pair dies with either end, so a half-present network is rebuilt
        # whole. The daemons go too, even when they still answer: one left running
        # would stay in the old namespace. Guests' definitions stay.
        for key in HOSTS:
            self._stop_host(key)
        self._remove_network()
        a, b = HOSTS["A"], HOSTS["B"]
        for hd in (a, b):
            _run(["ip", "netns", "add", hd.netns], f"create network namespace {hd.netns}")
        _run(["ip", "link", "add", a.veth, "type", "veth", "peer", "name", b.veth], "create the lab veth pair")
        for hd in (a, b):
            _run(["ip", "link", "set", hd.veth, "netns", hd.netns], f"move {hd.veth} into {hd.netns}")
            _run(
                ["ip", "-n", hd.netns, "addr", "add", f"{hd.address}/{LAB_PREFIX_LEN}", "dev", hd.veth],
                f"address {hd.veth}",
            )
            _run(["ip", "-n", hd.netns, "link", "set", "lo", "up"], f"bring up lo in {hd.netns}")
            _run(["ip", "-n", hd.netns, "link", "set", hd.veth, "up"], f"bring up {hd.veth}")

    def _root_route_exists(self) -> bool:
        shown = _probe("ip", "-o", "route", "show", f"{HOSTS['B'].address}/32")
        return f"dev {ROOT_VETH}" in shown.stdout

    def _ensure_root_route(self) -> None:
        if self._root_route_exists():
            return
        b = HOSTS["B"]
        _probe("ip", "link", "del", ROOT_VETH)  # a leftover without its route
        _run(["ip", "link", "add", ROOT_VETH, "type", "veth", "peer", "name", ROOT_VETH_PEER], "create the root veth")
        _run(["ip", "link", "set", ROOT_VETH_PEER, "netns", b.netns], f"move {ROOT_VETH_PEER} into {b.netns}")
        _run(["ip", "addr", "add", ROOT_VETH_ADDR, "dev", ROOT_VETH], f"address {ROOT_VETH}")
        _run(
            ["ip", "-n", b.netns, "addr", "add", ROOT_VETH_PEER_ADDR, "dev", ROOT_VETH_PEER],
            f"address {ROOT_VETH_PEER}",
        )
        _run(["ip", "link", "set", ROOT_VETH, "up"], f"bring up {ROOT_VETH}")
        _run(["ip", "-n", b.netns, "link", "set", ROOT_VETH_PEER, "up"], f"bring up {ROOT_VETH_PEER}")
        gateway_ip = ROOT_VETH_PEER_ADDR.split("/")[0]
        _run(["ip", "route", "add", f"{b.address}/32", "via", gateway_ip, "dev", ROOT_VETH], "route to host B")

    def _remove_network(self) -> None:
        # Deleting one end of a veth deletes its peer; the route goes with the link.
        _probe("ip", "link", "del", ROOT_VETH)
        for hd in HOSTS.values():
            for pid in _pids_in_netns(hd.netns):
                log.warning("pid %d still runs in %s; stopping it", pid, hd.netns)
                _stop_processes([pid], "")  # any command: whatever lives in our namespace is ours
            if self._netns_exists(hd.key):
                _run(["ip", "netns", "del", hd.netns], f"delete network namespace {hd.netns}")

    # ---------------------------------------------------------- internals: daemons

    def _daemon_pid(self, key: str) -> int | None:
        pid_file = self.host_dir(key) / "libvirtd.pid"
        try:
            return int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write_configs(self, key: str) -> bool:
        """Write libvirtd.conf and qemu.conf; True if either changed."""
        hd, d, tls = HOSTS[key], self.host_dir(key), self.tls_dir(key)
        for sub in ("etc", "run", "lib/images", "lib/qemu", "cache", "log/qemu"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        libvirtd_conf = f"""# Written by hosts/lab.py on every `lab up`; edits are lost.
listen_tcp = 1
listen_tls = {int(hd.listen_tls)}
listen_addr = "{hd.address}"
tcp_port = "{LIBVIRT_TCP_PORT}"
tls_port = "{LIBVIRT_TLS_PORT}"
auth_tcp = "none"
auth_tls = "none"
auth_unix_rw = "none"
key_file = "{tls}/server-key.pem"
cert_file = "{tls}/server-cert.pem"
ca_file = "{tls}/ca-cert.pem"
host_uuid = "{hd.host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
        qemu_conf = f"""# Written by hosts/lab.py on every `lab up`; edits are lost.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
migration_host = "{hd.address}"
migration_address = "{hd.address}"
migrate_tls_x509_cert_dir = "{tls}"
migrate_tls_x509_verify = 1
"""
        changed = _write_if_changed(d / "etc" / "libvirtd.conf", libvirtd_conf)
        return _write_if_changed(d / "etc" / "qemu.conf", qemu_conf) or changed

    def _ensure_daemon(self, key: str, restart: bool = False) -> None:
        changed = self._write_configs(key)
        pid = self._daemon_pid(key)
        if pid is not None and _process_alive(pid, "libvirtd"):
            # Patience before calling a live daemon hung: restarting it would kill
            # the migrations it is running for someone else.
            if not changed and not restart and wait_for(lambda: self._answers(key), DAEMON_ANSWER_GRACE_S):
                return
            log.info(
                "restarting libvirtd %s (%s)", key, "configuration changed" if changed or restart else "not answering"
            )
        # Also when it died: reaps it and drops its PID file. Guests it left running
        # are picked up again by the new daemon.
        self._stop_daemon(key)
        self._start_daemon(key)

    def _answers(self, key: str) -> bool:
        try:
            libvirt.open(self.uri(key)).close()
            return True
        except libvirt.libvirtError:
            return False

    def _start_daemon(self, key: str) -> None:
        hd, d = HOSTS[key], self.host_dir(key)
        for inside in BIND_MOUNTS:
            Path(inside).mkdir(parents=True, exist_ok=True)  # mount points; stay empty out here
        mounts = [f"mount --bind {shlex.quote(str(d / sub))} {inside}" for inside, sub in BIND_MOUNTS.items()]
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
        self._forget_connections(key)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not self._answers(key):
            if proc.poll() is not None:
                raise LabError(f"libvirtd on host {key} exited with {proc.returncode}: {self._daemon_log_tail(key)}")
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd on host {key} did not answer in {DAEMON_START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        log.info("libvirtd %s: pid %d", key, proc.pid)

    def _stop_daemon(self, key: str) -> None:
        pid = self._daemon_pid(key)
        if pid is not None:
            _stop_processes([pid], "libvirtd")
        child = self._children.pop(key, None)
        if child is not None:
            child.wait()  # reap it, or its zombie would keep the PID
        (self.host_dir(key) / "libvirtd.pid").unlink(missing_ok=True)
        self._forget_connections(key)

    def _stop_host(self, key: str) -> None:
        """Stop the daemon, then any QEMU it left behind (a daemon that dies leaves its guests running)."""
        self._stop_daemon(key)
        qemu_pids = []
        for pid_file in (self.host_dir(key) / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                qemu_pids.append(int(pid_file.read_text()))
        _stop_processes(qemu_pids, "qemu-system")

    def _forget_connections(self, key: str) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        # The gateway pools connections per URI (all hosts, dropped together): one
        # to a restarted daemon would be dead.
        gateway.close_all()

    def _daemon_log_tail(self, key: str) -> str:
        d = self.host_dir(key)
        lines = []
        for path in (d / "libvirtd.stdout", d / "log" / "libvirtd.log"):
            if path.exists():
                lines += [ln for ln in path.read_text(errors="replace").splitlines() if " info " not in ln][-3:]
        return " / ".join(lines) or "(no log)"

    def _warm(self) -> None:
        """A fresh daemon probes each QEMU binary for ~3.7 s on first use; pay it
        here, both hosts at once. Host capabilities cover every binary installed
        (qemu-system-x86 brings i386 too): the dashboard's first inventory asks for them."""

        def probe(key: str) -> None:
            conn = libvirt.open(self.uri(key))
            try:
                conn.getCapabilities()
                conn.getDomainCapabilities(QEMU, "x86_64", None, "qemu", 0)
            finally:
                conn.close()

        with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
            for future in [pool.submit(probe, key) for key in HOSTS]:
                try:
                    future.result()
                except libvirt.libvirtError as exc:
                    raise LabError(f"libvirtd cannot use QEMU: {exc}") from exc

    def _ensure_pool(self, key: str) -> None:
        """A `default` dir pool on the images directory: non-shared migration needs one."""
        conn = self.conn(key)
        try:
            pool = conn.storagePoolLookupByName("default")
        except libvirt.libvirtError:
            pool = conn.storagePoolDefineXML(
                f"<pool type='dir'><name>default</name><target><path>{IMAGES_DIR}</path></target></pool>", 0
            )
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)

    def _check_shared_dir(self, key: str) -> None:
        """The shared dir must be the same directory inside each host; it would
        not be if LAB_DIR lay below one of the bind-mounted libvirt directories."""
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        marker = self.shared_dir / ".lab-shared-marker"
        marker.write_text(self.root.as_posix())
        pid = self._daemon_pid(key)
        seen = _probe("nsenter", "-t", str(pid), "-m", "cat", str(marker))
        if seen.stdout != self.root.as_posix():
            raise LabError(f"host {key} does not see {self.shared_dir}; put LAB_DIR outside {', '.join(BIND_MOUNTS)}")

    # ---------------------------------------------------------- internals: guests

    def _lookup(self, key: str, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn(key).lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LabError(f"host {key}: {exc}") from exc

    def _define(self, spec: GuestSpec, host: str) -> None:
        for disk in spec.disks:
            # Read-only images are "installed" on both hosts (like an ISO library):
            # they are never copied by a migration, so the destination needs its own.
            for key in HOSTS if disk.readonly and not disk.shared else (host,):
                self._create_image(key, spec.name, disk)
        self.conn(host).defineXML(self._domain_xml(spec))

    def _create_image(self, key: str, guest: str, disk: DiskSpec) -> None:
        path = self.host_path(key, self.image_path(guest, disk))
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["qemu-img", "create", "-q", "-f", disk.format, str(path), f"{disk.size_mib}M"], f"create {path}")

    def _domain_xml(self, spec: GuestSpec) -> str:
        disks = []
        for disk in spec.disks:
            # Shareable disks are open on two hosts at once: no host page cache.
            cache = " cache='none'" if disk.shareable else ""
            flags = ("<readonly/>" if disk.readonly else "") + ("<shareable/>" if disk.shareable else "")
            disks.append(
                f"<disk type='file' device='disk'><driver name='qemu' type='{disk.format}'{cache}/>"
                f"<source file='{self.image_path(spec.name, disk)}'/><target dev='{disk.target}' bus='virtio'/>"
                f"{flags}</disk>"
            )
        cmdline = f"console=ttyS0 loglevel=4 mitigations=off dirty_mb={spec.dirty_mb} dirty_sleep={spec.dirty_sleep}"
        # A fixed UUID per name: redefining keeps the same domain, and A and B agree on it.
        guest_uuid = uuid.uuid5(GUEST_UUID_NAMESPACE, spec.name)
        disks_xml = "\n    ".join([*disks, *spec.interfaces])
        return f"""<domain type='qemu'>
  <name>{spec.name}</name>
  <uuid>{guest_uuid}</uuid>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel_path}</kernel>
    <initrd>{self.initrd_path}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    {disks_xml}
    <serial type='file'><source path='{SERIAL_LOG_DIR}/{spec.name}-serial.log'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""

    def _remove_local_copies(self, key: str, domain_xml: str) -> None:
        """Delete the host's copies of a guest's non-shared, writable images."""
        for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
            source = disk.find("source")
            if source is None or source.get("file") is None or disk.find("readonly") is not None:
                continue
            local = self.host_path(key, source.get("file"))
            if local != Path(source.get("file")):  # below a bind mount: this host's own file
                local.unlink(missing_ok=True)
        with contextlib.suppress(libvirt.libvirtError):
            self.conn(key).storagePoolLookupByName("default").refresh(0)

    def _start_demo_guests(self) -> None:
        started = []
        for spec in DEMO_GUESTS:
            key = self.where(spec.name)
            dom = self._lookup(key, spec.name)
            if not dom.isActive():
                self.serial_log(spec.name, key).unlink(missing_ok=True)
                dom.create()
                started.append((spec.name, key))
        for name, key in started:
            self.wait_booted(name, key)

    @staticmethod
    def _log_tail(path: Path) -> str:
        if not path.exists():
            return "(no serial log yet)"
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-3:])


def _ip_link_flags(netns: str, dev: str) -> str:
    shown = _probe("ip", "-n", netns, "-o", "link", "show", "dev", dev)
    return shown.stdout.split("<", 1)[-1].split(">", 1)[0] if "<" in shown.stdout else ""


def _hostdef(host: str) -> HostDef:
    try:
        return HOSTS[host.upper()]
    except (KeyError, AttributeError):
        raise LabError(f"unknown lab host {host!r}: use 'A' or 'B'") from None
