"""Migration parameters in plain words: the disk plan a destination is judged
with, and the Parameters table of a migration's page (labels and units, not
field names and Python values)."""

from __future__ import annotations

from typing import Any

from hosts.inventory import disk_verdicts
from hosts.models import VirtualMachine

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


def describe_disk_plan(vm: VirtualMachine, parameters: dict[str, Any]) -> list[str]:
    """One line per data disk: what happens to it under `parameters`."""
    chosen = set(parameters.get("disks") or [])
    create = parameters.get("create_images", True)
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


def describe(parameters: dict[str, Any]) -> list[tuple[str, str]]:
    """The requested parameters of a migration record, as label/value rows."""
    p = parameters
    rows: list[tuple[str, str]] = []
    plan = p.get("disk_plan") or [{"target": t} for t in p.get("disks") or []]
    if plan:
        rows.append(("Copy disks", ", ".join(disk_words(d) for d in plan)))
        rows.append(
            (
                "Destination images",
                "created (same format, size and path)" if p.get("create_images", True) else "already there",
            )
        )
        if p.get("replace_stale_images"):
            rows.append(("Stale images on the destination", "replaced"))
        rows.append(
            (
                "Source images after success",
                "removed" if p.get("remove_source_images") else "kept",
            )
        )
    else:
        rows.append(("Copy disks", "none (shared storage)"))
    rows.append(("Max downtime", f"{p['max_downtime_ms']} ms" if p.get("max_downtime_ms") else "libvirt's default"))
    bandwidth = p.get("bandwidth_mib_s") or 0
    rows.append(("Bandwidth limit", f"{bandwidth} MiB/s" if bandwidth else "unlimited"))
    rows.append(("Auto-converge", "on" if p.get("auto_converge") else "off"))
    if p.get("timeout_s"):
        action = TIMEOUT_ACTION_WORDS.get(p.get("timeout_action") or "", p.get("timeout_action") or "")
        rows.append(("Timeout", f"after {p['timeout_s']} s, {action}"))
    else:
        rows.append(("Timeout", "none"))
    method = p.get("compression") or ""
    if method:
        details = []
        if p.get("compression_level") is not None:
            details.append(f"level {p['compression_level']}")
        if p.get("compression_threads"):
            details.append(f"{p['compression_threads']} compression threads")
        if p.get("decompression_threads"):
            details.append(f"{p['decompression_threads']} decompression threads")
        words = COMPRESSION_WORDS.get(method, method)
        rows.append(("Compression", f"{words}, {', '.join(details)}" if details else words))
    else:
        rows.append(("Compression", "none"))
    parallel = p.get("parallel_connections") or 0
    rows.append(("Connections", f"{parallel} parallel (multifd)" if parallel >= 2 else "single channel"))
    rows.append(("Encryption", "TLS" if p.get("tls") else "none"))
    rows.append(("Migration threads pinned to CPUs", p.get("pin_cpus") or "not pinned"))
    rows.append(("On the destination", "persistent" if p.get("persistent_dest", True) else "transient"))
    rows.append(("On the source", "undefined" if p.get("undefine_source", True) else "kept defined"))
    rows.append(("Unsafe (skip libvirt's storage-safety check)", "yes" if p.get("unsafe") else "no"))
    return rows
