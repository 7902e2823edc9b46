"""Migration parameters: one typed value that owns every translation, from
the form's cleaned data to the record, to libvirt's migrateToURI3 spec, to
the planner's input, and to plain words for the migration page."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hosts import gateway
from hosts.inventory import disk_verdicts
from hosts.models import Host, VirtualMachine

from .planning import planner

DEFAULT_PLANNER_DOWNTIME_MS = 300.0  # QEMU's own downtime-limit when none is set
LEVEL_RANGES = {"mt": (0, 9), "zlib": (0, 9), "zstd": (0, 20)}
DEFAULT_COMPRESSION_LEVEL = 1
DISK_PLAN_KEYS = ("target", "source", "format", "capacity_bytes")


@dataclass(frozen=True)
class MigrationParameters:
    disks: tuple[str, ...] = ()
    # What each copied disk was when the operator chose it (target, source,
    # format, capacity_bytes): images are created and removed from this.
    disk_plan: tuple[dict[str, Any], ...] = ()
    create_images: bool = True
    # None: not decided yet (the destination step names a stale image instead of failing).
    replace_stale_images: bool | None = False
    remove_source_images: bool = True
    max_downtime_ms: int | None = None
    bandwidth_mib_s: int = 0
    auto_converge: bool = False
    # Post-copy allowed (VIR_MIGRATE_POSTCOPY): the operator may switch to it
    # while the migration runs; the timeout action may too.
    allow_postcopy: bool = False
    # The timeout the migration runs with (the explicit one, or the
    # completion timeout when that is shorter) and what it does; the progress
    # timeout takes the same action.
    timeout_s: int | None = None
    timeout_action: str = ""
    # The migration policy (migrator.policies) and its settings; records made
    # before policies hold none of them and read as "custom" without timeouts.
    policy: str = "custom"
    postcopy_after_s: int | None = None  # the N of "post-copy after N s"
    completion_timeout_per_gib_s: int | None = None  # seconds per GiB of memory + copied disk
    completion_timeout_s: int | None = None  # the above for this VM's size
    progress_timeout_s: int | None = None  # remaining data has not fallen for this long
    compression: str = ""
    compression_level: int | None = None
    compression_threads: int | None = None
    decompression_threads: int | None = None
    parallel_connections: int = 0
    tls: bool = False
    pin_cpus: str = ""
    persistent_dest: bool = True
    undefine_source: bool = True
    unsafe: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_form(cls, data: dict[str, Any], vm_disks: list[dict[str, Any]]) -> MigrationParameters:
        """From a valid MigrationForm's cleaned data."""
        method = data.get("compression") or ""
        disks = tuple(data.get("disks") or ())
        level = data.get("compression_level")
        return cls(
            disks=disks,
            disk_plan=tuple({k: d.get(k) for k in DISK_PLAN_KEYS} for d in vm_disks if d["target"] in disks),
            create_images=bool(data.get("create_images")),
            replace_stale_images=bool(data.get("replace_stale_images")),
            remove_source_images=bool(data.get("remove_source_images")),
            max_downtime_ms=data.get("max_downtime_ms"),
            bandwidth_mib_s=data.get("bandwidth_mib_s") or 0,
            auto_converge=bool(data.get("auto_converge")),
            allow_postcopy=bool(data.get("allow_postcopy")),
            timeout_s=data.get("timeout_s"),
            timeout_action=(data.get("timeout_action") or "") if any(data.get(k) for k in TIMEOUT_KEYS) else "",
            policy=data.get("policy") or "custom",
            postcopy_after_s=data.get("postcopy_after_s"),
            completion_timeout_per_gib_s=data.get("completion_timeout_per_gib_s"),
            progress_timeout_s=data.get("progress_timeout_s"),
            compression=method,
            compression_level=(DEFAULT_COMPRESSION_LEVEL if level is None else level)
            if method in LEVEL_RANGES
            else None,
            compression_threads=data.get("compression_threads") if method == "mt" else None,
            decompression_threads=data.get("decompression_threads") if method == "mt" else None,
            parallel_connections=data.get("parallel_connections") or 0,
            tls=bool(data.get("tls")),
            pin_cpus=data.get("pin_cpus") or "",
            persistent_dest=bool(data.get("persistent_dest")),
            undefine_source=bool(data.get("undefine_source")),
            unsafe=bool(data.get("unsafe")),
        )

    @classmethod
    def from_record(cls, data: dict[str, Any] | MigrationParameters | None) -> MigrationParameters:
        """From a stored record (older records may lack keys or hold nulls)."""
        if isinstance(data, MigrationParameters):
            return data
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        if "replace_stale_images" in data and data["replace_stale_images"] is None:
            known["replace_stale_images"] = None
        known["disks"] = tuple(known.get("disks") or ())
        known["disk_plan"] = tuple(dict(d) for d in known.get("disk_plan") or ())
        for name in ("bandwidth_mib_s", "parallel_connections"):
            known[name] = int(known.get(name) or 0)
        for name in ("timeout_action", "compression", "pin_cpus"):
            known[name] = known.get(name) or ""
        known["policy"] = known.get("policy") or "custom"
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def as_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        record["disks"] = list(self.disks)
        record["disk_plan"] = [dict(d) for d in self.disk_plan]
        return {**self.extra, **record}

    def replace(self, **changes: Any) -> MigrationParameters:
        return dataclasses.replace(self, **changes)

    @property
    def copies_disks(self) -> bool:
        return bool(self.disks)

    @property
    def allows_postcopy(self) -> bool:
        return self.allow_postcopy or self.effective_timeout_action == "postcopy"

    @property
    def effective_timeout_action(self) -> str:
        return self.timeout_action if self.timeout_s or self.progress_timeout_s else ""

    def to_spec(self, destination: Host) -> gateway.MigrationSpec:
        """libvirt's side: migrateToURI3's destination, typed parameters and flags."""
        migrate_uri = ""
        if destination.migration_address:
            host = destination.migration_address
            migrate_uri = f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
        return gateway.MigrationSpec(
            dconnuri=destination.effective_peer_uri,
            migrate_uri=migrate_uri,
            bandwidth_mib_s=self.bandwidth_mib_s,
            max_downtime_ms=self.max_downtime_ms,
            auto_converge=self.auto_converge,
            postcopy=self.allow_postcopy,
            copy_storage=self.copies_disks,
            migrate_disks=list(self.disks),
            compression=self.compression,
            compression_level=self.compression_level,
            compression_threads=self.compression_threads,
            decompression_threads=self.decompression_threads,
            parallel_connections=self.parallel_connections,
            tls=self.tls,
            persistent_dest=self.persistent_dest,
            undefine_source=self.undefine_source,
            unsafe=self.unsafe,
            pin_cpus=self.pin_cpus,
            pin_with_migration_param=bool(self.pin_cpus) and gateway.SUPPORTS_MIGRATION_PIN_PARAM,
            timeout_s=self.timeout_s,
            timeout_action=self.effective_timeout_action,
            progress_timeout_s=self.progress_timeout_s,
        )

    def planner_input(self, **measured: Any) -> planner.PlanInput:
        """The planner's side; `measured` carries what the parameters do not
        say (memory, dirty rates, bandwidth, zero pages)."""
        return planner.PlanInput(
            max_downtime_ms=float(self.max_downtime_ms or DEFAULT_PLANNER_DOWNTIME_MS),
            auto_converge=self.auto_converge,
            compression=self.compression or None,
            parallel_connections=max(1, self.parallel_connections),
            timeout_s=self.timeout_s or None,
            timeout_action=self.effective_timeout_action or None,
            progress_timeout_s=self.progress_timeout_s or None,
            **measured,
        )


# Any of these set: the migration has a timeout, and its action is kept.
TIMEOUT_KEYS = ("timeout_s", "completion_timeout_per_gib_s", "progress_timeout_s", "postcopy_after_s")

TIMEOUT_ACTION_WORDS = {
    "suspend": "suspend the VM so the copy finishes",
    "postcopy": "switch to post-copy",
    "abort": "abort (the VM stays on the source)",
}
COMPRESSION_WORDS = {"xbzrle": "xbzrle", "mt": "mt (multi-threaded zlib)", "zlib": "zlib", "zstd": "zstd"}


def _size(capacity_bytes: int | None) -> str:
    if not capacity_bytes:
        return ""
    mib = capacity_bytes / 2**20
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def disk_words(disk: dict[str, Any]) -> str:
    """'vda (qcow2, 64 MiB)'."""
    details = ", ".join(x for x in (disk.get("format") or "", _size(disk.get("capacity_bytes"))) if x)
    return f"{disk['target']} ({details})" if details else disk["target"]


def describe_disk_plan(vm: VirtualMachine, parameters: MigrationParameters) -> list[str]:
    """One line per data disk: what happens to it under `parameters`."""
    chosen = set(parameters.disks)
    create = parameters.create_images
    lines = []
    for disk, verdict in zip(vm.disks, disk_verdicts(vm.disks, vm.host.prefixes), strict=True):
        if not verdict.data:
            continue
        if disk["target"] in chosen:
            into = "a new image created on the destination" if create else "the image already on the destination"
            lines.append(f"Copy {disk_words(disk)} into {into}")
        elif verdict.migratable:
            lines.append(f"{disk['target']} is not copied: the destination must already have it")
        else:
            lines.append(f"{disk['target']} stays: {verdict.reason}")
    return lines


TIMEOUT_FIRED_WORDS = {
    "completion": "the completion timeout",
    "progress": "the progress timeout",
}


def timeout_fired_words(fired: str, action: str, record: dict[str, Any] | MigrationParameters) -> str:
    """What fired and what it did, in plain words: 'The progress timeout fired
    (the remaining data had not fallen for 20 s): the migration was aborted;
    the VM stays on the source.'"""
    p = MigrationParameters.from_record(record)
    if fired == "progress":
        why = f"the remaining data had not fallen for {p.progress_timeout_s} s"
    elif p.completion_timeout_s and p.timeout_s == p.completion_timeout_s:
        why = f"{p.timeout_s} s had passed: {p.completion_timeout_per_gib_s} s per GiB of memory and copied disk"
    else:
        why = f"{p.timeout_s} s had passed"
    what = TIMEOUT_FIRED_WORDS.get(fired, "the timeout")
    done = {
        "abort": "the migration was aborted; the VM stays on the source",
        "suspend": "the VM was suspended so the copy finishes",
        "postcopy": "the migration switched to post-copy",
    }.get(action, action)
    return f"{what[0].upper()}{what[1:]} fired ({why}): {done}."
