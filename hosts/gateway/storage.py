"""Disk images on a host, seen through libvirt's storage API (the dashboard
has no shell there): whether a path exists and who uses it, creating and
deleting images.

Looking at a directory no pool covers takes a short-lived transient pool;
`path_info(..., probe=False)` never does (pages opened with GET only read),
and says so with `seen=False`.

Reading a path runs under the gateway's call bound; creating and deleting
images and pools have no bound of their own (a large image takes what it
takes): keepalive ends them when the daemon falls silent.
"""

from __future__ import annotations

import contextlib
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

import libvirt

from .connections import UNBOUNDED, call
from .constants import ErrorCode
from .domain_xml import disk_files
from .errors import GatewayError


@dataclass(frozen=True)
class PathInfo:
    path: str
    exists: bool
    is_block_device: bool
    pool: str  # the storage pool covering the directory, "" when none
    pool_available_bytes: int | None
    used_by: tuple[str, ...] = ()  # names of the host's VMs (running or defined) whose disk this is
    capacity_bytes: int | None = None
    # False: no pool covers the directory and probing was not allowed, so
    # `exists` is not known (it says False).
    seen: bool = True


def _pool_for_dir(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool | None:
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path", "")
        if target.rstrip("/") == directory.rstrip("/"):
            return pool
    return None


@contextlib.contextmanager
def _dir_pool(
    conn: libvirt.virConnect, directory: str, probe: bool = True
) -> Iterator[tuple[libvirt.virStoragePool | None, bool]]:
    """The pool covering `directory`, else (when `probe`) a short-lived
    transient one. Yields (None, True) when the directory does not exist
    there, (None, False) when no pool covers it and probing is not allowed."""
    pool = _pool_for_dir(conn, directory)
    if pool is not None:
        yield pool, False
        return
    if not probe:
        yield None, False
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
            if path in disk_files(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
                users.append(dom.name())
    return tuple(sorted(users))


def path_info(uri: str, path: str, *, probe: bool = True) -> PathInfo:
    """Whether `path` exists on the host and which of the host's VMs use it.
    With probe=False nothing is created on the host: a directory no pool
    covers comes back with seen=False."""
    directory, _, name = path.rpartition("/")
    return call(uri, lambda conn: _path_info(conn, path, directory, name, probe))


def _path_info(conn: libvirt.virConnect, path: str, directory: str, name: str, probe: bool) -> PathInfo:
    with _dir_pool(conn, directory, probe) as (pool, transient):
        if pool is None:
            # No such directory on the host (the file cannot exist there), or
            # not looked at.
            return PathInfo(path, False, False, "", None, seen=transient)
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

    def create(conn: libvirt.virConnect) -> None:
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

    call(uri, create, UNBOUNDED)


def delete_volume(uri: str, path: str) -> bool:
    """Delete the image at `path`; False when there was none."""
    directory, _, name = path.rpartition("/")

    def delete(conn: libvirt.virConnect) -> bool:
        with _dir_pool(conn, directory) as (pool, _transient):
            if pool is None:
                return False
            pool.refresh(0)
            try:
                vol = pool.storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == ErrorCode.NO_STORAGE_VOL:
                    return False
                raise
            vol.delete(0)
            return True

    return call(uri, delete, UNBOUNDED)


def refresh_pool(uri: str, name: str) -> None:
    """Make the pool see files added or removed behind libvirt's back."""
    call(uri, lambda conn: conn.storagePoolLookupByName(name).refresh(0), UNBOUNDED)


def ensure_dir_pool(uri: str, name: str, directory: str) -> None:
    """A persistent, autostarted `dir` pool on `directory`, started: libvirt
    creates a non-shared migration's images only where a pool covers them."""
    call(uri, lambda conn: _ensure_dir_pool(conn, name, directory), UNBOUNDED)


def _ensure_dir_pool(conn: libvirt.virConnect, name: str, directory: str) -> None:
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != ErrorCode.NO_STORAGE_POOL:
            raise
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = name
        ET.SubElement(ET.SubElement(root, "target"), "path").text = directory
        pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        pool.setAutostart(1)
    if not pool.isActive():
        pool.create(0)
