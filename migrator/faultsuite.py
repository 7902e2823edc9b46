"""The fault suite: real faults injected into real lab migrations.

Each fault starts a migration of a lab guest from host A to host B through
the same form, record and executor as the browser, injects its fault at a
chosen phase, undoes it, and then checks the promise (R1, R17): the VM runs
exactly once, the guest kept running (its serial counter went on) with its
memory pattern intact, nothing paused is left on any host, and the record's
state and reason are true. `manage.py bench_faults` prints one row per fault;
tests/test_faults_lab.py asserts the same rows.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.models import Host

from . import actions
from .executor import Executor, reconcile
from .forms import MigrationForm
from .jobs import queue_migration
from .models import FINAL_STATES, Migration, MigrationState

PHASE_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 150.0
# A cut longer than libvirt's keepalive (5 s x 5 between the daemons) fails the job.
LONG_CUT_S = 40.0
SHORT_CUT_S = 3.0
HUNG_S = 45.0
RESTART_AFTER_S = 10.0


class FaultSuiteError(Exception):
    """The suite could not run a case (the lab, not the product, failed)."""


@dataclass
class Case:
    """One migration with one fault."""

    name: str
    guest: str
    overrides: dict[str, Any]
    inject: Callable[[Attempt], None]
    # What a true record says: its final states, where the VM runs ("A"/"B"/"any"),
    # and words its reason or note must contain.
    states: tuple[str, ...]
    on: str
    words: str = ""
    destination: str = "B"
    postgresql_only: bool = False
    in_child: bool = False  # the job runs in a child process (the worker that gets killed)
    prepare: Callable[[Attempt], None] | None = None  # before the migration is queued
    define: Callable[[Any], None] | None = None  # defines the guest on A (before it boots)


@dataclass
class Row:
    name: str
    state: str = ""
    on: str = ""
    reason: str = ""
    seconds: float = 0.0
    vm_lost: bool = False
    wrong_record: bool = False
    stuck: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.vm_lost or self.wrong_record or self.stuck)


class Attempt:
    """A running case: the lab, the record, and the job's thread."""

    def __init__(self, lab, hosts: dict[str, Host], user, case: Case) -> None:
        self.lab, self.hosts, self.user, self.case = lab, hosts, user, case
        self.migration: Migration | None = None
        self.thread: threading.Thread | None = None
        self.child: subprocess.Popen | None = None
        self.notes: list[str] = []

    # ---------------------------------------------------------- phases

    def record(self) -> Migration:
        assert self.migration is not None
        self.migration.refresh_from_db()
        return self.migration

    def wait(self, what: str, test: Callable[[Migration], bool], timeout: float = PHASE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.record()
            if test(m):
                return
            if m.state in FINAL_STATES:
                raise FaultSuiteError(f"{self.case.name}: the migration ended ({m.state}) before {what}")
            time.sleep(0.1)
        raise FaultSuiteError(f"{self.case.name}: waited {timeout:.0f} s for {what} in vain")

    def copying(self, at_least_mib: float = 4) -> None:
        self.wait(
            "data on the wire",
            lambda m: (
                (m.last_sample or {}).get("data_processed_bytes", 0) >= at_least_mib * 2**20
                or (m.last_sample or {}).get("disk_processed_bytes", 0) >= at_least_mib * 2**20
            ),
        )

    def claimed(self) -> None:
        self.wait("claim", lambda m: m.state != MigrationState.QUEUED)

    def postcopy(self) -> None:
        self.wait("post-copy", lambda m: m.postcopy_started_at is not None)

    def job_ended(self, timeout: float = SETTLE_TIMEOUT_S) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    # ---------------------------------------------------------- acting

    def ask(self, kind: str, value: int | None = None) -> None:
        actions.request_action(self.record(), kind, value, actions.Requester(self.user, "fault suite"))

    def cancel(self) -> None:
        actions.request_cancel(self.record(), actions.Requester(self.user, "fault suite"))

    def resume_here(self) -> None:
        """Resume an interrupted post-copy as the Resume button does, with the
        job run in this thread instead of a worker."""
        m = self.record()
        m.log("resume asked", "Resume post-copy asked by the fault suite.")
        Executor(m).resume()


# ------------------------------------------------------------ the cases


def _link_short(at: Attempt) -> None:
    at.copying()
    with at.lab.fault.link_cut("A"):
        time.sleep(SHORT_CUT_S)


def _link_long(at: Attempt) -> None:
    at.copying()
    with at.lab.fault.link_cut("A"):
        at.wait("the job to give up", lambda m: m.state not in (MigrationState.RUNNING,), LONG_CUT_S + 30)


def _postcopy_cut(at: Attempt) -> None:
    at.copying(2)
    # Post-copy ignores the migration's bandwidth cap: a slow link keeps it
    # going long enough to cut.
    at.lab.fault.slow_link("A")
    at.ask("postcopy")
    at.postcopy()
    time.sleep(0.5)
    at.lab.fault.cut_link("A")
    try:
        # The daemons' keepalive ends libvirt's call within ~30 s: interrupted.
        at.wait("the interruption", lambda m: m.state == MigrationState.INTERRUPTED, LONG_CUT_S + 30)
    finally:
        at.lab.fault.restore_link("A")
        at.lab.fault.clear_link_shaping("A")
    at.notes.append("interrupted")
    at.job_ended()
    # QEMU's own stream goes on once the link is back; the worker's
    # maintenance pass (reconcile) records the end on libvirt's word.
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline and at.record().state == MigrationState.INTERRUPTED:
        time.sleep(3)
        reconcile(wait_s=5)


def _daemon_killed(at: Attempt) -> None:
    at.copying()
    at.lab.fault.kill_daemon("B")
    # Started again a little later, as systemd would: the job, which keeps
    # asking B, then removes what B still has of the VM.
    time.sleep(RESTART_AFTER_S)
    at.lab.fault.start_daemon("B")
    at.job_ended()


def _daemon_hung(at: Attempt) -> None:
    at.copying()
    with at.lab.fault.daemon_hung("B"):
        # Long enough for the daemons' keepalive (5 s x 5) to end libvirt's call.
        time.sleep(HUNG_S)


def _source_restarted(at: Attempt) -> None:
    at.copying()
    at.lab.fault.restart_daemon("A")


def _worker_killed(at: Attempt) -> None:
    at.copying()
    assert at.child is not None
    at.child.kill()
    at.child.wait()
    # Its lease runs out; the reconciler (any worker's maintenance) settles it.
    cutoff = timezone.now() - timedelta(seconds=settings.MIGRATION_LEASE_S + 1)
    Migration.objects.filter(pk=at.record().pk).update(heartbeat_at=cutoff)
    reconcile(wait_s=120)


def _redis_restarted(at: Attempt) -> None:
    at.copying()
    restart_redis()


def _postgresql_restarted(at: Attempt) -> None:
    at.copying()
    restart_postgresql()
    connections.close_all()


DISK_GUEST = "fault-disk"
DISK_MIB, DISK_DATA_MIB = 32, 24


def _define_disk_guest(lab) -> None:
    """A guest whose disk holds data to copy (a block mirror skips what was never written)."""
    from hosts.lab import DiskSpec

    disk = DiskSpec("vda", size_mib=DISK_MIB)
    image = lab.host_path("A", str(lab.image_path(DISK_GUEST, disk)))
    if lab.where(DISK_GUEST) == "A" and image.exists():
        return
    if lab.where(DISK_GUEST):
        lab.remove_guest(DISK_GUEST)
    lab.define_guest(DISK_GUEST, 128, dirty_mb=0, disks=[disk])
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {DISK_DATA_MIB}M", str(image)],
        check=True,
        capture_output=True,
    )


def _slow_disk_copy(at: Attempt) -> None:
    at.lab.fault.slow_link("A", "40mbit")


def _disk_full(at: Attempt) -> None:
    # Filled once the image exists: filled before, the pre-checks refuse it for want of space.
    at.wait("the destination image", lambda m: m.events.filter(state="image").exists())
    at.lab.fault.fill_disk("B", leave_bytes=8 * 2**20)
    try:
        at.job_ended()
    finally:
        at.lab.fault.unfill_disk("B")
        at.lab.fault.clear_link_shaping("A")


def _cancel_queued(at: Attempt) -> None:
    at.cancel()


def _cancel_while_copying(at: Attempt) -> None:
    at.copying()
    at.cancel()


def _cancel_in_postcopy(at: Attempt) -> None:
    at.copying(2)
    at.lab.fault.slow_link("A")
    try:
        at.ask("postcopy")
        at.postcopy()
        try:
            at.cancel()
            raise FaultSuiteError("a cancel in post-copy was accepted")
        except actions.ActionRefused as refusal:
            at.notes.append(f"cancel refused: {refusal}")
    finally:
        at.lab.fault.clear_link_shaping("A")


SLOW = {"bandwidth_mib_s": 12}
CASES = [
    Case("link cut short", "idle", SLOW, _link_short, (MigrationState.SUCCEEDED,), "B"),
    Case(
        "link cut long",
        "idle",
        SLOW,
        _link_long,
        (MigrationState.FAILED,),
        "A",
        "connection between lab-a and lab-b was lost",
    ),
    # The source's compression threads hold pages when the link goes: the job
    # must still give up and the guest keep running on the source.
    Case(
        "link cut while compressing",
        "idle",
        {**SLOW, "compression": "mt"},
        _link_long,
        (MigrationState.FAILED,),
        "A",
        "connection between lab-a and lab-b was lost",
    ),
    Case(
        "link cut in post-copy",
        "web-shared",
        {"bandwidth_mib_s": 4, "allow_postcopy": True},
        _postcopy_cut,
        (MigrationState.SUCCEEDED,),
        "B",
    ),
    Case(
        "destination daemon killed",
        "idle",
        SLOW,
        _daemon_killed,
        (MigrationState.FAILED,),
        "A",
        "daemon on lab-b",
    ),
    Case(
        "destination daemon hung",
        "idle",
        SLOW,
        _daemon_hung,
        (MigrationState.FAILED,),
        "A",
        "lab-b",
    ),
    # libvirt 9.0 picks an outgoing migration up again after a restart: it may
    # complete or fail; the record must say which.
    Case(
        "source daemon restarted",
        "idle",
        SLOW,
        _source_restarted,
        (MigrationState.SUCCEEDED, MigrationState.FAILED),
        "any",
    ),
    Case(
        "worker killed",
        "idle",
        SLOW,
        _worker_killed,
        (MigrationState.SUCCEEDED, MigrationState.FAILED),
        "any",
        in_child=True,
    ),
    Case("Redis restarted", "idle", SLOW, _redis_restarted, (MigrationState.SUCCEEDED,), "B"),
    Case(
        "PostgreSQL restarted",
        "idle",
        SLOW,
        _postgresql_restarted,
        (MigrationState.SUCCEEDED,),
        "B",
        postgresql_only=True,
    ),
    Case(
        "destination disk full",
        DISK_GUEST,
        {},
        _disk_full,
        (MigrationState.FAILED,),
        "A",
        "lab-b ran out of disk space",
        prepare=_slow_disk_copy,
        define=_define_disk_guest,
    ),
    Case("cancel while queued", "idle", SLOW, _cancel_queued, (MigrationState.CANCELLED,), "A"),
    Case("cancel while copying", "idle", SLOW, _cancel_while_copying, (MigrationState.CANCELLED,), "A"),
    Case(
        "cancel in post-copy",
        "web-shared",
        {"bandwidth_mib_s": 4, "allow_postcopy": True},
        _cancel_in_postcopy,
        (MigrationState.SUCCEEDED,),
        "B",
    ),
]


def cases(names: list[str] | None = None) -> list[Case]:
    chosen = [c for c in CASES if not c.postgresql_only or connection.vendor == "postgresql"]
    if names:
        chosen = [c for c in chosen if c.name in names or c.name.replace(" ", "-") in names]
    return chosen


# ------------------------------------------------------------ running a case


def run_case(lab, hosts: dict[str, Host], user, case: Case, log: Callable[[str], None] = print) -> Row:
    row = Row(case.name)
    started = time.monotonic()
    at = Attempt(lab, hosts, user, case)
    source, destination = hosts["A"], hosts[case.destination]
    if case.define is not None:
        case.define(lab)
    _guest_on_a(lab, case.guest)
    since = lab.last_tick(case.guest, "A")
    try:
        if case.prepare is not None:
            case.prepare(at)
        at.migration = _queue(source, destination, user, case)
        if case.inject is _cancel_queued:
            case.inject(at)
        else:
            _start(at)
            case.inject(at)
        at.job_ended()
        _settle_if_left(at)
    except FaultSuiteError as error:
        row.problems.append(str(error))
    finally:
        lab.fault.undo_all()
        lab.heal()
    row.seconds = time.monotonic() - started
    _judge(lab, at, case, row, since)
    log(f"  {case.name}: {row.state} on {row.on or '?'} ({row.seconds:.0f} s) {'; '.join(row.problems)}")
    return row


def _guest_on_a(lab, name: str) -> None:
    """Running on A and defined nowhere else (an earlier case may have left it on B)."""
    places = lab.where_running(name)
    if places != [("A", "running")]:
        lab.reset_guest(name)
    lab.wait_tick(name, "A")


def _queue(source: Host, destination: Host, user, case: Case) -> Migration:
    inventory.refresh_host(source)
    vm = source.vms.get(name=case.guest)
    features = gateway.migration_features(connect_uri(source), vm.uuid)
    form = MigrationForm(
        MigrationForm.defaults(vm, destination, **case.overrides), vm=vm, features=features, destination=destination
    )
    if not form.is_valid():
        raise FaultSuiteError(f"{case.name}: the form refused the migration: {form.errors.as_text()}")
    return queue_migration(vm=vm, destination=destination, parameters=form.parameters(), report=form.report, user=user)


def _start(at: Attempt) -> None:
    m = at.migration
    if at.case.in_child:
        _start_in_child(at)
        return

    def job() -> None:
        try:
            Executor(Migration.objects.get(pk=m.pk)).run()
        finally:
            connections.close_all()

    at.thread = threading.Thread(target=job, name=f"fault-{at.case.name}", daemon=True)
    at.thread.start()
    at.claimed()


def _start_in_child(at: Attempt) -> None:
    """The doomed worker: the job's own MigrationRun in a child process, the
    record claimed in its name (a child could not see a test database)."""
    m = at.migration
    spec = Executor(m).parameters.to_spec(at.hosts[at.case.destination])
    code = (
        "from hosts import gateway; "
        f"spec = gateway.MigrationSpec(**{spec.__dict__!r}); "
        f"gateway.MigrationRun({connect_uri(at.hosts['A'])!r}, {m.vm_uuid!r}, spec, "
        "on_sample=lambda s: print(s.get('data_processed', 0), flush=True)).run()"
    )
    at.child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert m.claim(at.child.pid, "fault-suite-child")
    # Its samples reach the record through this process, as a worker's would.
    threading.Thread(target=_relay_child, args=(at,), daemon=True).start()


def _relay_child(at: Attempt) -> None:
    m = at.migration
    try:
        for line in at.child.stdout:
            with contextlib.suppress(ValueError):
                Migration.objects.filter(pk=m.pk).update(last_sample={"data_processed_bytes": int(line.strip())})
    finally:
        connections.close_all()


def _settle_if_left(at: Attempt) -> None:
    """The maintenance pass a worker runs every minute: what it settles counts."""
    m = at.record()
    if m.state in (MigrationState.ATTENTION, MigrationState.INTERRUPTED):
        reconcile(wait_s=60)


def _judge(lab, at: Attempt, case: Case, row: Row, since: float | None) -> None:
    health = lab.check_guest(case.guest, since=since)
    if not health.runs_once or not health.counter_went_on or not health.pattern_intact:
        row.vm_lost = True
        row.problems.extend(health.problems)
    where = health.hosts_running[0] if len(health.hosts_running) == 1 else ""
    row.on = where
    if at.migration is None:
        row.wrong_record = True
        return
    m = at.record()
    row.state = m.state
    row.reason = m.error_message or m.outcome_note
    if m.state not in FINAL_STATES:
        row.stuck = True
        row.problems.append(f"the record is still {m.state}")
        return
    expected_host = {"A": "lab-a", "B": "lab-b"}.get(where, "")
    if m.state not in case.states:
        row.wrong_record = True
        row.problems.append(f"expected {' or '.join(case.states)}, the record says {m.state}: {row.reason}")
    if case.on != "any" and where != case.on:
        row.wrong_record = True
        row.problems.append(f"expected the VM on {case.on}, it runs on {where or 'no single host'}")
    if m.vm_location != expected_host:
        row.wrong_record = True
        row.problems.append(f"the record says the VM is on {m.vm_location!r}, it runs on {expected_host or where!r}")
    text = f"{m.error_message} {m.outcome_note}"
    if case.words and case.words not in text:
        row.wrong_record = True
        row.problems.append(f"the reason does not say {case.words!r}: {text.strip()}")
    for raw in ("client socket is closed", "End of file while reading"):
        if m.error_message.startswith(raw):
            row.wrong_record = True
            row.problems.append(f"the reason is libvirt's raw text: {m.error_message}")


# ------------------------------------------------------------ services


def restart_redis() -> None:
    """Restart the Redis the project uses (a local one): shut it down, start
    it again as scripts/bootstrap.sh does."""
    import redis

    url = settings.REDIS_URL
    client = redis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    host, port = kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))
    if host not in ("127.0.0.1", "localhost"):
        raise FaultSuiteError(f"Redis at {host} is not on this machine; the suite restarts only a local one")
    with contextlib.suppress(redis.RedisError):
        client.shutdown(nosave=True)
    time.sleep(1)
    if not _redis_answers(client):
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                host,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=True,
            capture_output=True,
        )
    deadline = time.monotonic() + 15
    while not _redis_answers(client):
        if time.monotonic() > deadline:
            raise FaultSuiteError("Redis did not come back within 15 s")
        time.sleep(0.2)


def _redis_answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def restart_postgresql() -> None:
    """Restart the local PostgreSQL cluster (fast mode: every connection drops)."""
    db = settings.DATABASES["default"]
    if db.get("HOST") not in ("127.0.0.1", "localhost", ""):
        raise FaultSuiteError("PostgreSQL is not on this machine; the suite restarts only a local one")
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split()
    if len(clusters) < 2:
        raise FaultSuiteError("no PostgreSQL cluster found (pg_lsclusters)")
    version, name = clusters[0], clusters[1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
    )
