"""Connections to hosts: opened with a timeout, pooled per process, dropped
as soon as they fail."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import libvirt

from .constants import ErrorCode
from .errors import GatewayError

DEFAULT_CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

_pool: dict[tuple[int, str], libvirt.virConnect] = {}
_pool_lock = threading.Lock()


def _open(uri: str, timeout_s: float) -> libvirt.virConnect:
    """Open a connection in a helper thread so a host that never answers
    (an SSH prompt, a dropped SYN) costs `timeout_s`, not forever."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["conn"] = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"libvirt-open {uri}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise GatewayError(
            f"No answer from {uri} within {timeout_s:.0f} s.",
            code=ErrorCode.OPERATION_TIMEOUT,
            uri=uri,
        )
    if "error" in result:
        raise GatewayError.from_libvirt(result["error"], uri)
    conn = result["conn"]
    with contextlib.suppress(libvirt.libvirtError):
        # Remote drivers only: notices a dead peer during long migrations.
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def open_connection(uri: str, timeout_s: float | None = None) -> libvirt.virConnect:
    """A new, unshared connection (the caller closes it): for aborting a job
    while another connection is busy running it."""
    return _open(uri, timeout_s or DEFAULT_CONNECT_TIMEOUT_S)


def answers(uri: str, timeout_s: float | None = None) -> bool:
    """Whether the daemon accepts a new connection now. A new one, because a
    pooled connection may be to the daemon's previous incarnation."""
    try:
        conn = _open(uri, timeout_s or DEFAULT_CONNECT_TIMEOUT_S)
    except GatewayError:
        return False
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
    return True


@contextlib.contextmanager
def connection(uri: str, timeout_s: float | None = None) -> Iterator[libvirt.virConnect]:
    """A pooled connection, per process (RQ forks; a socket must not be shared
    across a fork). A failure inside the block drops the connection."""
    key = (os.getpid(), uri)
    with _pool_lock:
        conn = _pool.get(key)
    if conn is not None:
        try:
            alive = conn.isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive:
            _discard(key)
            conn = None
    if conn is None:
        conn = _open(uri, timeout_s or DEFAULT_CONNECT_TIMEOUT_S)
        with _pool_lock:
            _pool[key] = conn
    try:
        yield conn
    except libvirt.libvirtError as exc:
        error = GatewayError.from_libvirt(exc, uri)
        if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            _discard(key)
        raise error from exc


def _discard(key: tuple[int, str]) -> None:
    with _pool_lock:
        conn = _pool.pop(key, None)
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def close_all() -> None:
    for key in list(_pool):
        _discard(key)


def call(uri: str, fn: Callable[[libvirt.virConnect], Any]) -> Any:
    with connection(uri) as conn:
        return fn(conn)
