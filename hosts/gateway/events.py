"""libvirt's default event loop, run by one daemon thread per process.

With the loop running, setKeepAlive works on remote connections: a daemon
that stops answering has its connections closed by keepalive, so a call
stuck on it returns an error instead of blocking forever. libvirt must have
the loop before a connection is opened (it decides then whether the
connection can keep alive), so the first connection opened starts it.

libvirt takes one registration per process, and a forked child inherits it;
the thread does not survive a fork. The loop thread therefore parks outside
libvirt while the process forks (RQ workers fork for every job): a child
forked while the thread polled would inherit an event loop owned by a thread
it does not have, and its own loop thread would never run. The child starts
its own thread when it opens its first connection.

The loop is woken through a file descriptor that a forked child shares with
its parent, so either one may swallow a wake-up meant for the other: the
loop also wakes by itself every HEARTBEAT_MS, so that it never stays deaf to
a connection or a timer added meanwhile.
"""

from __future__ import annotations

import os
import threading
import time

import libvirt

LOOP_THREAD_NAME = "libvirt-event-loop"
# How long a fork waits for the loop thread to leave libvirt; it takes
# microseconds unless a callback is running.
PARK_BEFORE_FORK_S = 2.0
RETRY_AFTER_FAILED_RUN_S = 0.1
HEARTBEAT_MS = 1000

_RUNNING, _PAUSING, _PARKED = "running", "pausing", "parked"

_lock = threading.Lock()
_registered = False  # libvirt's registration, inherited by a forked child
_thread: threading.Thread | None = None
_thread_pid: int | None = None
_state = _RUNNING
_state_changed = threading.Condition()


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once and run it in a daemon
    thread of this process (again in a forked child)."""
    global _registered, _thread, _thread_pid
    with _lock:
        if not _registered:
            libvirt.virEventRegisterDefaultImpl()
            libvirt.virEventAddTimeout(HEARTBEAT_MS, _heartbeat, None)
            _registered = True
        if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name=LOOP_THREAD_NAME, daemon=True)
            _thread_pid = os.getpid()
            _thread.start()


def event_loop_running() -> bool:
    """Whether this process runs libvirt's event loop."""
    return _thread is not None and _thread_pid == os.getpid() and _thread.is_alive()


def event_loop_turns(timeout_s: float = 1.0) -> bool:
    """Whether this process's loop dispatches an event within `timeout_s`
    (a loop inherited in mid-poll across a fork never would)."""
    if not event_loop_running():
        return False
    fired = threading.Event()

    def once(timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)
        fired.set()

    libvirt.virEventAddTimeout(0, once, None)
    return fired.wait(timeout_s)


def _run() -> None:
    global _state
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            time.sleep(RETRY_AFTER_FAILED_RUN_S)
        with _state_changed:
            if _state == _PAUSING:
                _state = _PARKED
                _state_changed.notify_all()
                _state_changed.wait_for(_resumed)


def _resumed() -> bool:
    return _state == _RUNNING


def _parked() -> bool:
    return _state == _PARKED


def _heartbeat(_timer: int, _opaque: object) -> None:
    pass


def _wake(timer: int, _opaque: object) -> None:
    libvirt.virEventRemoveTimeout(timer)


def _before_fork() -> None:
    global _state
    _lock.acquire()
    if not event_loop_running():
        return
    with _state_changed:
        _state = _PAUSING
    # A timer due at once ends the loop's current poll; it removes itself.
    libvirt.virEventAddTimeout(0, _wake, None)
    with _state_changed:
        _state_changed.wait_for(_parked, PARK_BEFORE_FORK_S)


def _after_fork_in_parent() -> None:
    global _state
    with _state_changed:
        _state = _RUNNING
        _state_changed.notify_all()
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _thread, _thread_pid, _state, _state_changed
    _lock = threading.Lock()
    _thread = None
    _thread_pid = None
    _state = _RUNNING
    _state_changed = threading.Condition()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
