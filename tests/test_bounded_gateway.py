"""The gateway's bounds, without the lab: a host that accepts connections and
never answers (what a stopped libvirtd looks like) costs a caller its bound,
not forever; the pool forgets a connection stuck past its bound; libvirt's
event loop runs once per process, in a forked child too; the bounds come from
Django's settings."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse

from hosts import gateway
from hosts.gateway.events import LOOP_THREAD_NAME
from hosts.models import Host

TEST_URI = "test:///default"
BOUND_S = 1
# Threads starting, a page rendering: what a slow test machine adds to a bound.
MARGIN_S = 3


class SilentHost:
    """A Unix socket that accepts connections and never answers."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="silent-", dir="/tmp")
        self.path = os.path.join(self._dir, "libvirt-sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._server.settimeout(0.1)
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        """Hang up: libvirt calls still waiting on this host fail at once."""
        self._stop.set()
        self._thread.join()
        for conn in self._accepted:
            conn.close()
        self._server.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def silent() -> Iterator[SilentHost]:
    host = SilentHost()
    yield host
    host.close()


@pytest.fixture
def bounds() -> Iterator[None]:
    """The gateway bounded at BOUND_S for the test, as it was afterwards."""
    before = gateway.current_settings()
    gateway.configure(connect_timeout_s=BOUND_S, call_timeout_s=BOUND_S)
    yield
    gateway.configure(**dataclasses.asdict(before))


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_it_gives_up_on_a_host_that_never_answers(silent, bounds):
    started = time.monotonic()
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.host_info(silent.uri)
    assert time.monotonic() - started < BOUND_S + MARGIN_S
    error = caught.value
    assert error.code == gateway.ErrorCode.OPERATION_TIMEOUT
    assert error.no_answer_s == BOUND_S
    assert error.message == f"{silent.uri} does not answer ({BOUND_S} s)."
    assert error.naming("lab-b").message == f"lab-b does not answer ({BOUND_S} s)."
    assert "libvirtd" in error.hint


def test_unknown_is_not_absent(silent, bounds):
    missing = "00000000-0000-0000-0000-00000000dead"
    assert gateway.vm_state(TEST_URI, missing) is None, "the host answered: no such VM"
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.vm_state(silent.uri, missing)
    assert caught.value.code == gateway.ErrorCode.OPERATION_TIMEOUT
    with pytest.raises(gateway.GatewayError):
        gateway.find_vm(silent.uri, uuid=missing)


def test_callers_of_a_silent_host_share_one_open(silent, bounds):
    for _ in range(2):
        with pytest.raises(gateway.GatewayError):
            gateway.list_vms(silent.uri)
    assert len(_threads_named(f"libvirt-open {silent.uri}")) == 1
    silent.close()
    assert gateway.wait_for(lambda: not _threads_named(f"libvirt-open {silent.uri}"), 5), "a hang-up ends the open"


def test_a_call_past_its_bound_raises_and_leaves_the_pool():
    with gateway.connection(TEST_URI) as stuck:
        pass
    release = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(gateway.GatewayError) as caught:
            gateway.call(TEST_URI, lambda conn: release.wait(30), timeout_s=0.5)
        assert time.monotonic() - started < 0.5 + MARGIN_S
        assert caught.value.code == gateway.ErrorCode.OPERATION_TIMEOUT
        with gateway.connection(TEST_URI) as fresh:
            assert fresh is not stuck, "the next caller opens a fresh connection"
    finally:
        release.set()
    # A call that answers in time keeps its connection pooled.
    assert gateway.call(TEST_URI, lambda conn: conn.getHostname())
    with gateway.connection(TEST_URI) as again:
        assert again is fresh


def test_a_call_hands_its_errors_to_the_caller():
    with pytest.raises(gateway.GatewayError) as caught:
        gateway.call(TEST_URI, lambda conn: conn.lookupByName("no-such-vm"))
    assert caught.value.code == gateway.ErrorCode.NO_DOMAIN

    def broken(conn):
        raise ValueError("not libvirt's")

    with pytest.raises(ValueError, match="not libvirt's"):
        gateway.call(TEST_URI, broken)
    assert gateway.call(TEST_URI, lambda conn: conn.getType(), gateway.UNBOUNDED).lower() == "test"


def test_the_event_loop_runs_once_per_process():
    threads = [threading.Thread(target=gateway.answers, args=(TEST_URI,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gateway.event_loop_running()
    assert len(_threads_named(LOOP_THREAD_NAME)) == 1
    assert gateway.event_loop_turns()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_its_own_event_loop():
    """RQ forks a work horse per job: the child must have a loop that turns."""
    assert gateway.answers(TEST_URI)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            ok = gateway.answers(TEST_URI) and gateway.event_loop_running() and gateway.event_loop_turns(5)
            os.write(write_end, b"turns" if ok else b"stuck")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        said = os.read(read_end, 16) if ready else b"no word"
    finally:
        os.close(read_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert said == b"turns"
    assert gateway.event_loop_turns(), "the parent's loop goes on after the fork"


def test_the_bounds_come_from_the_settings():
    assert gateway.current_settings() == gateway.GatewaySettings(
        settings.LIBVIRT_CONNECT_TIMEOUT_S,
        settings.LIBVIRT_CALL_TIMEOUT_S,
        settings.LIBVIRT_KEEPALIVE_INTERVAL_S,
        settings.LIBVIRT_KEEPALIVE_COUNT,
    )
    before = gateway.current_settings()
    with override_settings(
        LIBVIRT_CONNECT_TIMEOUT_S=4, LIBVIRT_CALL_TIMEOUT_S=7, LIBVIRT_KEEPALIVE_INTERVAL_S=2, LIBVIRT_KEEPALIVE_COUNT=1
    ):
        assert gateway.current_settings() == gateway.GatewaySettings(4, 7, 2, 1)
    assert gateway.current_settings() == before
    with pytest.raises(ValueError, match="call_timeout_s"):
        gateway.configure(call_timeout_s=0)
    with pytest.raises(ValueError, match="keepalive_count"):
        gateway.configure(keepalive_count=-1)
    assert gateway.current_settings() == before


@pytest.fixture
def quiet_hosts(test_host, bounds, settings) -> Iterator[list[Host]]:
    """Hosts that never answer, beside the test driver's host."""
    silents = [SilentHost() for _ in range(5)]
    # Their sockets are in /tmp: the allow-list (hosts.uris) must let them be opened.
    settings.LIBVIRT_SOCKET_DIRS = [*settings.LIBVIRT_SOCKET_DIRS, *(Path(s.path).parent for s in silents)]
    yield [Host.objects.create(name=f"quiet-{i}", uri=s.uri) for i, s in enumerate(silents, 1)]
    for each in silents:
        each.close()


@pytest.mark.django_db
def test_the_destination_step_waits_for_each_host_at_once(login, test_host, quiet_hosts, monkeypatch):
    answering = Host.objects.create(name="other", uri=TEST_URI)
    vm = test_host.vms.get(name="test")
    state_reads = []
    read_state = gateway.vm_state

    def vm_state(*args):
        state_reads.append(args)
        return read_state(*args)

    monkeypatch.setattr(gateway, "vm_state", vm_state)

    started = time.monotonic()
    response = login("operator").get(reverse("migrator:new"), {"vm": vm.pk})
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed < min(BOUND_S + MARGIN_S, len(quiet_hosts) * BOUND_S), (
        f"{len(quiet_hosts)} silent hosts cost {elapsed:.1f} s: they were not waited for at once"
    )
    assert len(state_reads) == 1, "the source is read once for every destination"
    reports = {host.name: report for host, report, _plan in response.context["options"]}
    assert set(reports) == {host.name for host in quiet_hosts} | {"other"}
    for host in quiet_hosts:
        message = f"{host.name} does not answer ({BOUND_S} s)."
        assert reports[host.name].no_answer == message
        assert [(c.name, c.status) for c in reports[host.name].failures] == [("destination reachable", "fail")]
        assert message in response.content.decode()
    reached = {c.name: c.status for c in reports[answering.name].checks}
    assert reached["destination reachable"] == "pass" and not reports[answering.name].no_answer
