"""Connections to hosts, and the bound every call runs under.

Connections are opened with a timeout, kept alive by libvirt's keepalive
(events.py runs the loop it needs), pooled per process and forgotten as soon
as they fail. `call` runs one piece of work on a host's pooled connection
and gives up when the host does not answer in time.

A connection leaves the pool by being forgotten, never closed from here: a
thread may still be inside a call on it. The binding closes a connection when
its last user lets go of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import libvirt

from .constants import ErrorCode
from .errors import GatewayError
from .events import ensure_event_loop

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_CALL_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
# For work whose length depends on the work (starting a VM, creating an
# image): no bound of its own; keepalive still ends it when the daemon falls
# silent for keepalive_interval_s × (keepalive_count + 1).
UNBOUNDED = math.inf


@dataclass(frozen=True)
class GatewaySettings:
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    keepalive_interval_s: int = KEEPALIVE_INTERVAL_S
    keepalive_count: int = KEEPALIVE_COUNT


_settings = GatewaySettings()


def configure(
    *,
    connect_timeout_s: float | None = None,
    call_timeout_s: float | None = None,
    keepalive_interval_s: int | None = None,
    keepalive_count: int | None = None,
) -> GatewaySettings:
    """Set the gateway's bounds (the hosts app passes Django's settings at
    start-up); a value left out stays as it is. Keepalive applies to
    connections opened from now on."""
    global _settings
    changes = {
        name: value
        for name, value in {
            "connect_timeout_s": connect_timeout_s,
            "call_timeout_s": call_timeout_s,
            "keepalive_interval_s": keepalive_interval_s,
            "keepalive_count": keepalive_count,
        }.items()
        if value is not None
    }
    for name in ("connect_timeout_s", "call_timeout_s"):
        if name in changes and not changes[name] > 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {changes[name]!r}.")
    for name in ("keepalive_interval_s", "keepalive_count"):
        if name in changes and (int(changes[name]) != changes[name] or changes[name] < 0):
            raise ValueError(f"{name} must be a whole number, 0 or more, not {changes[name]!r}.")
    _settings = replace(_settings, **changes)
    return _settings


def current_settings() -> GatewaySettings:
    return _settings


_pool: dict[tuple[int, str], libvirt.virConnect] = {}
_opening: dict[tuple[int, str], _Open] = {}
_pool_lock = threading.Lock()


class _Open:
    """libvirt.open in a helper thread, so that a host that never answers (an
    SSH prompt, a dropped SYN, a stopped daemon) costs each caller its timeout,
    not forever. The thread ends when the host answers or libvirt gives up;
    a pooled open then lands in the pool for the next caller."""

    def __init__(self, uri: str, pool_key: tuple[int, str] | None = None) -> None:
        self.uri = uri
        self.pool_key = pool_key
        self.conn: libvirt.virConnect | None = None
        self.error: libvirt.libvirtError | None = None
        self._settings = _settings
        self._done = threading.Event()
        try:
            ensure_event_loop()
        except libvirt.libvirtError as exc:
            raise GatewayError.from_libvirt(exc, uri) from exc
        threading.Thread(target=self._run, name=f"libvirt-open {uri}", daemon=True).start()

    def _run(self) -> None:
        try:
            conn = libvirt.open(self.uri)
            try:
                _keep_alive(conn, self._settings)
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
                raise
        except libvirt.libvirtError as exc:
            self.error = exc
        else:
            self.conn = conn
        if self.pool_key is not None:
            with _pool_lock:
                if self.conn is not None:
                    _pool[self.pool_key] = self.conn
                if _opening.get(self.pool_key) is self:
                    del _opening[self.pool_key]
        self._done.set()

    def wait(self, timeout_s: float) -> libvirt.virConnect:
        if not self._done.wait(timeout_s):
            raise GatewayError.no_answer(self.uri, timeout_s)
        if self.error is not None:
            raise GatewayError.from_libvirt(self.error, self.uri)
        return self.conn


def _keep_alive(conn: libvirt.virConnect, settings: GatewaySettings) -> None:
    try:
        conn.setKeepAlive(settings.keepalive_interval_s, settings.keepalive_count)
    except libvirt.libvirtError as exc:
        # Only remote drivers keep alive; test:/// and other in-process drivers say so.
        if exc.get_error_code() != ErrorCode.NO_SUPPORT:
            raise


def open_connection(uri: str, timeout_s: float | None = None) -> libvirt.virConnect:
    """A new, unshared connection (the caller closes it): for aborting a job
    while another connection is busy running it."""
    return _Open(uri).wait(timeout_s or _settings.connect_timeout_s)


def answers(uri: str, timeout_s: float | None = None) -> bool:
    """Whether the daemon accepts a new connection now. A new one, because a
    pooled connection may be to the daemon's previous incarnation."""
    try:
        conn = open_connection(uri, timeout_s)
    except GatewayError:
        return False
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
    return True


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _pooled(key: tuple[int, str], uri: str, timeout_s: float | None) -> libvirt.virConnect:
    """This process's connection to `uri`, opened if needed. One open per
    host at a time: callers that come while it runs wait for the same one."""
    with _pool_lock:
        conn = _pool.get(key)
    if conn is not None:
        if _alive(conn):
            return conn
        _forget(key, conn)
    with _pool_lock:
        conn = _pool.get(key)
        opening = _opening.get(key)
        if conn is None and opening is None:
            opening = _opening[key] = _Open(uri, key)
    if conn is not None:
        return conn
    return opening.wait(timeout_s or _settings.connect_timeout_s)


def _forget(key: tuple[int, str], conn: libvirt.virConnect) -> None:
    with _pool_lock:
        if _pool.get(key) is conn:
            del _pool[key]


def _run_on(key: tuple[int, str], uri: str, conn: libvirt.virConnect, fn: Callable[[libvirt.virConnect], T]) -> T:
    try:
        return fn(conn)
    except libvirt.libvirtError as exc:
        if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            _forget(key, conn)
        raise GatewayError.from_libvirt(exc, uri) from exc


@contextlib.contextmanager
def connection(uri: str, timeout_s: float | None = None) -> Iterator[libvirt.virConnect]:
    """A pooled connection, per process (RQ forks; a socket must not be shared
    across a fork), for a block with no bound of its own. A failure inside the
    block turns into GatewayError and drops a broken connection."""
    key = (os.getpid(), uri)
    conn = _pooled(key, uri, timeout_s)
    try:
        yield conn
    except libvirt.libvirtError as exc:
        if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            _forget(key, conn)
        raise GatewayError.from_libvirt(exc, uri) from exc


def call(uri: str, fn: Callable[[libvirt.virConnect], T], timeout_s: float | None = None) -> T:
    """fn(conn) on the host's pooled connection, within `timeout_s` (the
    configured call bound when None; UNBOUNDED for long work, run in the
    caller's thread).

    A host that does not answer in time raises GatewayError with code
    OPERATION_TIMEOUT and its connection leaves the pool, so the next caller
    opens a fresh one; the helper thread left behind ends when keepalive
    closes the stuck connection or the host answers. Opening a connection
    counts against the connect timeout, not against `timeout_s`.
    """
    bound = _settings.call_timeout_s if timeout_s is None else timeout_s
    key = (os.getpid(), uri)
    conn = _pooled(key, uri, None)
    if bound == UNBOUNDED:
        return _run_on(key, uri, conn, fn)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=_call_in_thread, args=(key, uri, conn, fn, outcome), name=f"libvirt-call {uri}", daemon=True
    )
    thread.start()
    thread.join(bound)
    if thread.is_alive():
        _forget(key, conn)
        # The helper thread holds the last reference: the connection is closed
        # there once the call returns, never from here while it runs.
        del conn
        raise GatewayError.no_answer(uri, bound)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _call_in_thread(
    key: tuple[int, str], uri: str, conn: libvirt.virConnect, fn: Callable[[libvirt.virConnect], Any], outcome: dict
) -> None:
    try:
        outcome["value"] = _run_on(key, uri, conn, fn)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
        outcome["error"] = exc


def close_all() -> None:
    """Close this process's pooled connections (a forked child leaves its
    parent's alone: they share the parent's sockets)."""
    pid = os.getpid()
    with _pool_lock:
        mine = [key for key in _pool if key[0] == pid]
        conns = [_pool.pop(key) for key in mine]
    for conn in conns:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _after_fork_in_child() -> None:
    global _pool_lock
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
