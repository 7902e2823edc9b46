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
from .constants import ErrorCode, JobType, MigrateFlag, MigrateParam
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
        if self.postcopy or self.timeout_action == "postcopy":
            flags |= MigrateFlag.POSTCOPY
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
        chosen.update(range(low, high + 1))
    if not chosen or max(chosen) >= ncpus or min(chosen) < 0:
        raise ValueError(f"CPU list {cpuset!r} must name CPUs between 0 and {ncpus - 1}.")
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


SETUP_POLL_S = 0.05


class MigrationRun:
    """Runs one live migration and watches it from a second connection.

    migrateToURI3 blocks; a monitor thread samples jobStats(), applies the
    timeout action and aborts on request, each on its own connection (abortJob
    on the migrating connection can hang for minutes in libvirt 9.0).
    """

    def __init__(
        self,
        source_uri: str,
        uuid: str,
        spec: MigrationSpec,
        *,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
        on_monitor_end: Callable[[], None] | None = None,
        sample_interval_s: float = 0.5,
    ) -> None:
        self.source_uri = source_uri
        self.uuid = uuid
        self.spec = spec
        self.on_sample = on_sample or (lambda stats: None)
        self.should_abort = should_abort or (lambda: False)
        # Called in the monitor thread as it ends, to release what the callbacks
        # held there (a database connection, say).
        self.on_monitor_end = on_monitor_end or (lambda: None)
        self.sample_interval_s = sample_interval_s
        self.applied: dict[str, Any] = {}
        self.timeout_action_taken = ""
        self.aborted = False
        self.last_stats: dict[str, Any] = {}
        self._done = threading.Event()
        self._monitor_error: BaseException | None = None

    def run(self) -> MigrationOutcome:
        spec = self.spec
        migrating = open_connection(self.source_uri)
        try:
            dom = migrating.lookupByUUIDString(self.uuid)
            saved_pin, pin_mode = self._pin_before(dom)
            self._apply_before(dom)
            monitor = threading.Thread(target=self._monitor, name="migration-monitor", daemon=True)
            monitor.start()
            self.applied.update({"flags": spec.flags(), "params": _jsonable(spec.params()), "dconnuri": spec.dconnuri})
            started = time.monotonic()
            try:
                dom.migrateToURI3(spec.dconnuri, spec.params(), spec.flags())
            except libvirt.libvirtError as exc:
                error = GatewayError.from_libvirt(exc, self.source_uri)
                self._finish_monitor(monitor)
                self._restore_pin(dom, saved_pin, pin_mode)
                return MigrationOutcome(
                    False, self.last_stats, error, self.applied, self.timeout_action_taken, pin_mode
                )
            wall_ms = int((time.monotonic() - started) * 1000)
            self._finish_monitor(monitor)
            stats = dict(self.last_stats)
            stats.setdefault("time_elapsed", wall_ms)
            stats["wall_time_ms"] = wall_ms
            return MigrationOutcome(True, stats, None, self.applied, self.timeout_action_taken, pin_mode)
        except libvirt.libvirtError as exc:
            raise GatewayError.from_libvirt(exc, self.source_uri) from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                migrating.close()

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

    def _watch(self) -> None:
        try:
            watcher = open_connection(self.source_uri)
        except GatewayError as exc:
            self._monitor_error = exc
            return
        try:
            dom = watcher.lookupByUUIDString(self.uuid)
            started = time.monotonic()
            downtime_pending = self.applied.get("max_downtime_ms", 0) is None
            sized = setup_recorded = False
            while not self._done.is_set():
                try:
                    stats = job_stats(dom)
                except libvirt.libvirtError:
                    stats = {}
                sized = sized or bool(stats.get("data_total"))
                if stats:
                    self.last_stats = stats
                    if downtime_pending:
                        with contextlib.suppress(libvirt.libvirtError):
                            dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
                            self.applied["max_downtime_ms"] = int(self.spec.max_downtime_ms)
                            downtime_pending = False
                    # Setup readings are all zeros: one is enough for the chart.
                    if sized or not setup_recorded:
                        setup_recorded = True
                        try:
                            self.on_sample(stats)
                        except Exception:  # noqa: BLE001 - a display failure must not stop the watch
                            pass
                if not self.aborted and self.should_abort():
                    self.aborted = True
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.abortJob()
                spec = self.spec
                if (
                    spec.timeout_s
                    and spec.timeout_action
                    and not self.timeout_action_taken
                    and time.monotonic() - started >= spec.timeout_s
                    and stats
                ):
                    self._take_timeout_action(dom)
                # Until libvirt has sized the job (the disk mirrors or the
                # first pass start) poll fast, so that even a sub-second
                # migration gets a first reading with its sizes.
                self._done.wait(self.sample_interval_s if sized else min(self.sample_interval_s, SETUP_POLL_S))
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                watcher.close()

    def _take_timeout_action(self, dom: libvirt.virDomain) -> None:
        action = self.spec.timeout_action
        self.timeout_action_taken = action
        try:
            if action == "suspend":
                # The guide's --timeout: pause the guest so the copy finishes;
                # libvirt resumes it on the destination.
                dom.suspend()
            elif action == "postcopy":
                dom.migrateStartPostCopy(0)
            elif action == "abort":
                self.aborted = True
                dom.abortJob()
        except libvirt.libvirtError as exc:
            self.timeout_action_taken = f"{action} failed: {exc.get_error_message()}"


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
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
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


def abort_job(uri: str, uuid: str) -> None:
    """Abort the VM's job from a fresh connection (see MigrationRun)."""
    conn = open_connection(uri)
    try:
        conn.lookupByUUIDString(uuid).abortJob()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (ErrorCode.OPERATION_INVALID, ErrorCode.NO_DOMAIN):
            raise GatewayError.from_libvirt(exc, uri) from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    # The record keeps libvirt's parameter names as plain strings, not MigrateParam members.
    return {str(key): value for key, value in params.items()}
