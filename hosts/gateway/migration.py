"""One live migration: the spec in the dashboard's terms, the run that
watches it, and the job queries that settle it afterwards.

Job statistics stay the dict that libvirt answers (typed parameters, one key
per counter, more in each release): the record stores them as they come and
reads them by libvirt's names.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from .connections import connection, open_connection
from .constants import STATE_NAMES, DomainState, ErrorCode, JobType, MigrateFlag, MigrateParam
from .domains import lookup_or_none
from .errors import GatewayError


@dataclass
class MigrationSpec:
    """Everything migrateToURI3 needs, in the dashboard's own terms."""

    dconnuri: str
    migrate_uri: str = ""
    bandwidth_mib_s: int = 0
    max_downtime_ms: int | None = None
    auto_converge: bool = False
    copy_storage: bool = False
    migrate_disks: list[str] = field(default_factory=list)
    compression: str = ""
    compression_level: int | None = None
    compression_threads: int | None = None
    decompression_threads: int | None = None
    parallel_connections: int = 0
    tls: bool = False
    postcopy: bool = False
    persistent_dest: bool = True
    undefine_source: bool = True
    unsafe: bool = False
    pin_cpus: str = ""
    pin_with_migration_param: bool = False
    timeout_s: int | None = None
    timeout_action: str = ""
    # The remaining data has not fallen for this long: take timeout_action too.
    progress_timeout_s: int | None = None
    # Recover a post-copy migration that lost its link (same flags and
    # parameters as the interrupted one, plus VIR_MIGRATE_POSTCOPY_RESUME).
    postcopy_resume: bool = False

    @property
    def allows_postcopy(self) -> bool:
        return self.postcopy or self.timeout_action == "postcopy"

    def flags(self) -> int:
        flags = MigrateFlag.LIVE | MigrateFlag.PEER2PEER
        if self.persistent_dest:
            flags |= MigrateFlag.PERSIST_DEST
        if self.undefine_source:
            flags |= MigrateFlag.UNDEFINE_SOURCE
        if self.unsafe:
            flags |= MigrateFlag.UNSAFE
        if self.auto_converge:
            flags |= MigrateFlag.AUTO_CONVERGE
        if self.copy_storage:
            flags |= MigrateFlag.NON_SHARED_DISK
        if self.compression:
            flags |= MigrateFlag.COMPRESSED
        if self.parallel_connections > 1:
            flags |= MigrateFlag.PARALLEL
        if self.tls:
            flags |= MigrateFlag.TLS
        if self.allows_postcopy or self.postcopy_resume:
            flags |= MigrateFlag.POSTCOPY
        if self.postcopy_resume:
            flags |= MigrateFlag.POSTCOPY_RESUME
        return int(flags)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.migrate_uri:
            params[MigrateParam.URI] = self.migrate_uri
        if self.bandwidth_mib_s:
            params[MigrateParam.BANDWIDTH] = int(self.bandwidth_mib_s)
        if self.copy_storage and self.migrate_disks:
            params[MigrateParam.MIGRATE_DISKS] = list(self.migrate_disks)
        if self.compression:
            params[MigrateParam.COMPRESSION] = self.compression
            if self.compression == "mt":
                for key, value in (
                    (MigrateParam.COMPRESSION_MT_LEVEL, self.compression_level),
                    (MigrateParam.COMPRESSION_MT_THREADS, self.compression_threads),
                    (MigrateParam.COMPRESSION_MT_DTHREADS, self.decompression_threads),
                ):
                    if value is not None:
                        params[key] = int(value)
            elif self.compression in ("zlib", "zstd") and self.compression_level is not None:
                key = f"VIR_MIGRATE_PARAM_COMPRESSION_{self.compression.upper()}_LEVEL"
                if hasattr(libvirt, key):
                    params[getattr(libvirt, key)] = int(self.compression_level)
        if self.parallel_connections > 1:
            params[MigrateParam.PARALLEL_CONNECTIONS] = int(self.parallel_connections)
        if self.pin_cpus and self.pin_with_migration_param:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATION_PIN] = self.pin_cpus
        return params


def migrate_flag_names(flags: int) -> list[str]:
    """'VIR_MIGRATE_LIVE', … for the bits set in `flags`."""
    names = [n for n in dir(libvirt) if n.startswith("VIR_MIGRATE_") and isinstance(getattr(libvirt, n), int)]
    single_bits = {getattr(libvirt, n): n for n in names if getattr(libvirt, n) & (getattr(libvirt, n) - 1) == 0}
    return [name for bit, name in sorted(single_bits.items()) if bit and flags & bit]


def parse_cpuset(cpuset: str, ncpus: int) -> tuple[bool, ...]:
    """'0-1,3' → a libvirt CPU map of `ncpus` booleans."""
    out_of_range = ValueError(f"CPU list {cpuset[:60]!r} must name CPUs between 0 and {ncpus - 1}.")
    chosen: set[int] = set()
    for part in cpuset.split(","):
        part = part.strip()
        if not part:
            continue
        bounds = part.split("-", 1)
        if not all(b.strip().isdigit() for b in bounds):
            where = f"{part!r}" if part == cpuset.strip() else f"{part!r} in {cpuset!r}"
            raise ValueError(f"{where} is not a CPU number or a range such as 0-1.")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise ValueError(f"The range {part!r} runs backwards; write it as {high}-{low}.")
        if high >= ncpus:
            raise out_of_range  # before a huge range is ever built
        chosen.update(range(low, high + 1))
    if not chosen:
        raise out_of_range
    return tuple(i in chosen for i in range(ncpus))


def _job_or_nothing(stats: dict[str, Any]) -> dict[str, Any]:
    return stats if stats.get("type", JobType.NONE) != JobType.NONE else {}


def job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    return _job_or_nothing(dom.jobStats(0))


@dataclass
class MigrationOutcome:
    completed: bool
    stats: dict[str, Any]
    error: GatewayError | None = None
    applied: dict[str, Any] = field(default_factory=dict)
    timeout_action_taken: str = ""
    pin_mode: str = ""
    # Which timeout took its action: "completion" (timeout_s from the start)
    # or "progress" (the remaining data stopped falling).
    timeout_fired: str = ""
    # The watch saw the source paused for post-copy: the VM ran on the
    # destination before the job ended.
    postcopy_started: bool = False
    # The dashboard's own connection to the source died with the job: the
    # source daemon stopped (or restarted), not the link between the hosts.
    source_connection_lost: bool = False
    # Resuming post-copy moved no data and was given up (see MigrationRun).
    resume_gave_up: bool = False


@dataclass(frozen=True)
class JobAction:
    """An operator's action on the running job (see MigrationRun.pending_actions)."""

    id: int
    kind: str  # "bandwidth", "max_downtime", "postcopy", "force_complete"
    value: int | None = None


SETUP_POLL_S = 0.05
ABORT_RETRY_S = 0.5
RESUME_PROGRESS_S = 45.0
RESUME_ABORT_WAIT_S = 15.0


class MigrationRun:
    """Runs one live migration and watches it from a second connection.

    migrateToURI3 blocks; a monitor thread samples jobStats(), applies the
    timeout action and the operator's actions, and aborts on request, each on
    its own connection (abortJob on the migrating connection can hang for
    minutes in libvirt 9.0). A callback that fails (the database restarting,
    say) costs one tick: the watch goes on, and `on_callback_error` lets the
    caller drop what failed.
    """

    def __init__(
        self,
        source_uri: str,
        uuid: str,
        spec: MigrationSpec,
        *,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
        pending_actions: Callable[[], list[JobAction]] | None = None,
        on_action: Callable[[JobAction, bool, str, dict[str, Any]], None] | None = None,
        on_postcopy: Callable[[], None] | None = None,
        on_timeout: Callable[[str, str, str], None] | None = None,
        on_callback_error: Callable[[BaseException], None] | None = None,
        on_monitor_end: Callable[[], None] | None = None,
        sample_interval_s: float = 0.5,
    ) -> None:
        self.source_uri = source_uri
        self.uuid = uuid
        self.spec = spec
        self.on_sample = on_sample or (lambda stats: None)
        self.should_abort = should_abort or (lambda: False)
        self.pending_actions = pending_actions or (lambda: [])
        self.on_action = on_action or (lambda action, ok, message, stats: None)
        self.on_postcopy = on_postcopy or (lambda: None)
        # (fired, action, result): which timeout fired, its action, and
        # libvirt's refusal when the action failed ("" when it was taken).
        self.on_timeout = on_timeout or (lambda fired, action, result: None)
        self.on_callback_error = on_callback_error or (lambda exc: None)
        # Called in the monitor thread as it ends, to release what the callbacks
        # held there (a database connection, say).
        self.on_monitor_end = on_monitor_end or (lambda: None)
        self.sample_interval_s = sample_interval_s
        self.applied: dict[str, Any] = {}
        self.timeout_action_taken = ""
        self.timeout_fired = ""
        self.aborted = False  # an abort was asked for (by the operator or the timeout)
        self.abort_confirmed = False  # libvirt accepted abortJob
        self.postcopy_started = False
        self.last_stats: dict[str, Any] = {}
        self._done = threading.Event()
        self._monitor_error: BaseException | None = None
        self._last_abort_try = 0.0
        self.resume_progress_s = RESUME_PROGRESS_S
        self.resume_gave_up = False

    def run(self) -> MigrationOutcome:
        spec = self.spec
        migrating = open_connection(self.source_uri)
        try:
            dom = migrating.lookupByUUIDString(self.uuid)
            saved_pin, pin_mode = (None, "") if spec.postcopy_resume else self._pin_before(dom)
            if not spec.postcopy_resume:
                self._apply_before(dom)
            monitor = threading.Thread(target=self._monitor, name="migration-monitor", daemon=True)
            monitor.start()
            self.applied.update({"flags": spec.flags(), "params": _jsonable(spec.params()), "dconnuri": spec.dconnuri})
            started = time.monotonic()
            try:
                if spec.postcopy_resume:
                    self._resume_within_progress(dom)
                else:
                    dom.migrateToURI3(spec.dconnuri, spec.params(), spec.flags())
            except libvirt.libvirtError as exc:
                error = GatewayError.from_libvirt(exc, self.source_uri)
                self._finish_monitor(monitor)
                lost = not _alive(migrating)
                if not lost:
                    self._restore_pin(dom, saved_pin, pin_mode)
                return MigrationOutcome(
                    False,
                    self.last_stats,
                    error,
                    self.applied,
                    self.timeout_action_taken,
                    pin_mode,
                    timeout_fired=self.timeout_fired,
                    postcopy_started=self.postcopy_started,
                    source_connection_lost=lost,
                    resume_gave_up=self.resume_gave_up,
                )
            wall_ms = int((time.monotonic() - started) * 1000)
            self._finish_monitor(monitor)
            stats = dict(self.last_stats)
            stats.setdefault("time_elapsed", wall_ms)
            stats["wall_time_ms"] = wall_ms
            return MigrationOutcome(
                True,
                stats,
                None,
                self.applied,
                self.timeout_action_taken,
                pin_mode,
                timeout_fired=self.timeout_fired,
                postcopy_started=self.postcopy_started,
            )
        except libvirt.libvirtError as exc:
            raise GatewayError.from_libvirt(exc, self.source_uri) from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                migrating.close()

    def _resume_within_progress(self, dom: libvirt.virDomain) -> None:
        """migrateToURI3 with POSTCOPY_RESUME, given up when no data moves for
        `resume_progress_s`: a destination QEMU that waits for a page still on
        the source can block its own monitor, and libvirt's call then never
        returns. Giving up interrupts the resumed job (ABORT_JOB_POSTCOPY),
        which leaves post-copy paused, as it was."""
        spec, outcome = self.spec, {}

        def call() -> None:
            try:
                dom.migrateToURI3(spec.dconnuri, spec.params(), spec.flags())
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=call, name="postcopy-resume", daemon=True)
        caller.start()
        progress, moved_at = -1, time.monotonic()
        while caller.is_alive():
            caller.join(0.5)
            processed = int(self.last_stats.get("data_processed") or 0)
            if processed > progress:
                progress, moved_at = processed, time.monotonic()
            elif time.monotonic() - moved_at > self.resume_progress_s:
                self.resume_gave_up = True
                with contextlib.suppress(GatewayError, libvirt.libvirtError):
                    abort_job(self.source_uri, self.uuid, postcopy=True)
                caller.join(RESUME_ABORT_WAIT_S)
                if caller.is_alive():
                    raise libvirt.libvirtError(
                        f"resuming post-copy moved no data in {self.resume_progress_s:.0f} s and did not stop"
                    )
                break
        if "error" in outcome:
            raise outcome["error"]
        if self.resume_gave_up:
            raise libvirt.libvirtError(f"resuming post-copy moved no data in {self.resume_progress_s:.0f} s")

    def _finish_monitor(self, monitor: threading.Thread) -> None:
        self._done.set()
        monitor.join(timeout=10)

    def _apply_before(self, dom: libvirt.virDomain) -> None:
        if self.spec.max_downtime_ms:
            try:
                dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
                self.applied["max_downtime_ms"] = int(self.spec.max_downtime_ms)
            except libvirt.libvirtError:
                # Older libvirt only accepts it during the job; the monitor retries.
                self.applied["max_downtime_ms"] = None

    def _pin_before(self, dom: libvirt.virDomain) -> tuple[Any, str]:
        spec = self.spec
        if not spec.pin_cpus:
            return None, ""
        if spec.pin_with_migration_param:
            self.applied["pin"] = {"mode": "migration.pin", "cpus": spec.pin_cpus}
            return None, "migration.pin"
        # Upstream libvirt has no migration.pin: pin QEMU's emulator threads,
        # which the migration threads inherit, before the job starts (re-pinning
        # during the job blocks on libvirt's job lock).
        saved = dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        cpumap = parse_cpuset(spec.pin_cpus, len(saved))
        dom.pinEmulator(cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self.applied["pin"] = {"mode": "emulator", "cpus": spec.pin_cpus}
        return saved, "emulator"

    def _restore_pin(self, dom: libvirt.virDomain, saved: Any, mode: str) -> None:
        if mode != "emulator" or saved is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            dom.pinEmulator(tuple(saved), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def restore_pin_on(self, uri: str, saved_len: int | None = None) -> None:
        """After success the emulator pin travelled with the VM: give it all
        CPUs back on the destination."""
        if self.applied.get("pin", {}).get("mode") != "emulator":
            return
        with connection(uri) as conn:
            dom = conn.lookupByUUIDString(self.uuid)
            ncpus = conn.getInfo()[2]
            with contextlib.suppress(libvirt.libvirtError):
                dom.pinEmulator(tuple([True] * ncpus), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def _monitor(self) -> None:
        try:
            self._watch()
        finally:
            self.on_monitor_end()

    def _callback(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a failing callback must not end the watch
            with contextlib.suppress(Exception):
                self.on_callback_error(exc)
            return default

    def _watch(self) -> None:
        watcher = None
        while watcher is None:
            try:
                watcher = open_connection(self.source_uri)
            except GatewayError as exc:
                # The source not answering ends the job too; until then, retry.
                self._monitor_error = exc
                if self._done.wait(1.0):
                    return
        try:
            dom = watcher.lookupByUUIDString(self.uuid)
            started = time.monotonic()
            downtime_pending = self.applied.get("max_downtime_ms", 0) is None
            sized = setup_recorded = False
            progress = ProgressWatch(self.spec.progress_timeout_s)
            while not self._done.is_set():
                try:
                    stats = job_stats(dom)
                except libvirt.libvirtError:
                    stats = {}
                sized = sized or bool(stats.get("data_total"))
                if stats:
                    self.last_stats = stats
                    self._note_postcopy(dom)
                    if downtime_pending:
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
                            self.applied["max_downtime_ms"] = int(self.spec.max_downtime_ms)
                            downtime_pending = False
                    # Setup readings are all zeros: one is enough for the chart.
                    if sized or not setup_recorded:
                        setup_recorded = True
                        self._callback(self.on_sample, stats)
                if not self.aborted and self._callback(self.should_abort, default=False):
                    self.aborted = True
                if self.aborted and not self.abort_confirmed:
                    self._try_abort(dom)
                for action in self._callback(self.pending_actions, default=[]) or []:
                    ok, message = self._apply_action(dom, action)
                    self._callback(self.on_action, action, ok, message, dict(self.last_stats))
                spec = self.spec
                if sized and stats:
                    progress.note(stats.get("data_remaining"))
                if spec.timeout_action and not self.timeout_action_taken and stats and not self.postcopy_started:
                    if spec.timeout_s and time.monotonic() - started >= spec.timeout_s:
                        self._take_timeout_action(dom, "completion")
                    elif progress.expired():
                        self._take_timeout_action(dom, "progress")
                # Until libvirt has sized the job (the disk mirrors or the
                # first pass start) poll fast, so that even a sub-second
                # migration gets a first reading with its sizes.
                self._done.wait(self.sample_interval_s if sized else min(self.sample_interval_s, SETUP_POLL_S))
        except libvirt.libvirtError as exc:
            self._monitor_error = exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                watcher.close()

    def _note_postcopy(self, dom: libvirt.virDomain) -> None:
        if self.postcopy_started or not self.spec.allows_postcopy and not self.spec.postcopy_resume:
            return
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return
        if state == DomainState.PAUSED and reason in POSTCOPY_PAUSE_REASONS:
            self.postcopy_started = True
            self._callback(self.on_postcopy)

    def _try_abort(self, dom: libvirt.virDomain) -> None:
        """Abort until libvirt accepts it: a cancel that lands before libvirt
        created the job (abortJob: "no job is active") is tried again."""
        now = time.monotonic()
        if now - self._last_abort_try < ABORT_RETRY_S:
            return
        self._last_abort_try = now
        if self.postcopy_started:
            # Aborting post-copy would pause the VM on the destination with its
            # memory split: never. The job finishes; the cancel came too late.
            self.abort_confirmed = True
            return
        try:
            dom.abortJob()
            self.abort_confirmed = True
        except libvirt.libvirtError:
            pass

    def _apply_action(self, dom: libvirt.virDomain, action: JobAction) -> tuple[bool, str]:
        try:
            if action.kind == "bandwidth":
                flags = libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY if self.postcopy_started else 0
                dom.migrateSetMaxSpeed(int(action.value or 0), flags)
                return True, (
                    f"Bandwidth limit set to {action.value} MiB/s." if action.value else "Bandwidth limit removed."
                )
            if action.kind == "max_downtime":
                dom.migrateSetMaxDowntime(int(action.value or 0), 0)
                return True, f"Max downtime set to {action.value} ms."
            if action.kind == "postcopy":
                if not self.spec.allows_postcopy:
                    return False, "This migration was started without post-copy allowed; it cannot switch now."
                if self.postcopy_started:
                    return False, "The migration is already in post-copy."
                dom.migrateStartPostCopy(0)
                return True, "Switched to post-copy: the VM now runs on the destination."
            if action.kind == "force_complete":
                if self.postcopy_started:
                    return False, "The migration is in post-copy; it completes by itself."
                dom.suspend()
                return True, "The VM was paused so the last pass can finish; it resumes on the destination."
        except libvirt.libvirtError as exc:
            return False, f"libvirt refused: {exc.get_error_message()}"
        return False, f"Unknown action {action.kind!r}."

    def _take_timeout_action(self, dom: libvirt.virDomain, fired: str = "completion") -> None:
        action = self.spec.timeout_action
        self.timeout_action_taken = action
        self.timeout_fired = fired
        try:
            if action == "suspend":
                # The guide's --timeout: pause the guest so the copy finishes;
                # libvirt resumes it on the destination.
                dom.suspend()
            elif action == "postcopy":
                dom.migrateStartPostCopy(0)
            elif action == "abort":
                self.aborted = True
                self._try_abort(dom)
        except libvirt.libvirtError as exc:
            self.timeout_action_taken = f"{action} failed: {exc.get_error_message()}"
        result = "" if self.timeout_action_taken == action else self.timeout_action_taken
        self._callback(self.on_timeout, fired, action, result)


# The remaining data must fall by more than this to count as progress: a
# reading that lands a page lower in the next pass is not a step forward.
PROGRESS_MIN_FALL_BYTES = 1024 * 1024


class ProgressWatch:
    """The progress timeout: expired once the remaining data has not fallen
    below its lowest reading (by PROGRESS_MIN_FALL_BYTES) for `timeout_s`,
    counted from the first sized reading. Pre-copy's remaining data falls
    during each pass and jumps back at the next one: only a new low counts."""

    def __init__(self, timeout_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.lowest: int | None = None
        self.fell_at: float | None = None

    def note(self, remaining: Any) -> None:
        if not self.timeout_s or remaining is None:
            return
        remaining = int(remaining)
        if self.lowest is None or remaining < self.lowest - PROGRESS_MIN_FALL_BYTES:
            self.lowest, self.fell_at = remaining, self.clock()

    def expired(self) -> bool:
        return bool(self.timeout_s) and self.fell_at is not None and self.clock() - self.fell_at >= self.timeout_s


POSTCOPY_PAUSE_REASONS = (libvirt.VIR_DOMAIN_PAUSED_POSTCOPY, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def migrate_domain(uri: str, name: str, spec: MigrationSpec) -> None:
    """migrateToURI3 alone: no samples, no timeout action, no abort. What a
    watched MigrationRun costs is measured against this, and the lab's own
    tests migrate with it."""
    with connection(uri) as conn:
        dom = conn.lookupByName(name)
        if spec.max_downtime_ms:
            dom.migrateSetMaxDowntime(int(spec.max_downtime_ms), 0)
        dom.migrateToURI3(spec.dconnuri, spec.params(), spec.flags())


def completed_job_stats(uri: str, uuid: str) -> dict[str, Any]:
    """Final statistics of the last migration, read where the VM now is
    (with UNDEFINE_SOURCE the source no longer knows the domain)."""
    with connection(uri) as conn:
        try:
            dom = conn.lookupByUUIDString(uuid)
            # KEEP_COMPLETED: reading them must not discard them for the next reader.
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
        except libvirt.libvirtError:
            return {}
    return _job_or_nothing(stats)


def active_job(uri: str, uuid: str) -> dict[str, Any]:
    """The VM's running job on the host, {} when none (or no such VM)."""
    with connection(uri) as conn:
        try:
            return job_stats(conn.lookupByUUIDString(uuid))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.NO_DOMAIN:
                return {}
            raise


def abort_job(uri: str, uuid: str, *, postcopy: bool = False) -> None:
    """Abort the VM's job from a fresh connection (see MigrationRun). With
    `postcopy`, interrupt a post-copy job instead (it stays paused, resumable)."""
    conn = open_connection(uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        if postcopy:
            dom.abortJobFlags(libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY)
        else:
            dom.abortJob()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (ErrorCode.OPERATION_INVALID, ErrorCode.NO_DOMAIN):
            raise GatewayError.from_libvirt(exc, uri) from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    # The record keeps libvirt's parameter names as plain strings, not MigrateParam members.
    return {str(key): value for key, value in params.items()}


@dataclass(frozen=True)
class Placement:
    """Where a VM stands on one host, in the terms that settle a migration."""

    state: str | None  # "running", "paused", … or None: not defined there
    postcopy: str = ""  # "active" while post-copy runs, "failed" when it lost its link
    persistent: bool = False
    # Shut off because it migrated away (libvirt's own word that it left).
    migrated_away: bool = False

    @property
    def running(self) -> bool:
        return self.state in ("running", "blocked")


_POSTCOPY_REASONS = {
    (DomainState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY): "active",
    (DomainState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED): "failed",
    (DomainState.RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY): "active",
    (DomainState.RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED): "failed",
}


def placement(uri: str, uuid: str) -> Placement:
    """The VM's state on the host and its post-copy condition. Raises
    GatewayError when the host does not answer: unknown is not absent."""
    with connection(uri) as conn:
        try:
            dom = conn.lookupByUUIDString(uuid)
            state, reason = dom.state()
            persistent = bool(dom.isPersistent())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ErrorCode.NO_DOMAIN:
                return Placement(None)
            raise
    return Placement(
        STATE_NAMES.get(DomainState(state), "unknown"),
        _POSTCOPY_REASONS.get((state, reason), ""),
        persistent,
        migrated_away=(state, reason) == (DomainState.SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED),
    )


def forget_inactive_copy(uri: str, uuid: str) -> bool:
    """Undefine a shut-off definition of the VM (what UNDEFINE_SOURCE leaves
    undone when a migration ends outside its call). A VM that runs or is
    paused there is never touched. True when one was removed."""
    with connection(uri) as conn:
        dom = lookup_or_none(conn, uuid)
        if dom is None:
            return False
        if dom.isActive() or not dom.isPersistent():
            return False
        dom.undefine()
        return True
