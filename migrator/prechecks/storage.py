"""R5–R7, R13: the disks under the chosen plan — shared disks visible at the
same path, copied disks creatable (or stale images named), kept disks
present, and room for the images; from the destination itself, or from
the stored inventory alone (`check_storage_stored`)."""

from __future__ import annotations

from typing import Any

from hosts import gateway
from hosts.connection import connect_uri
from hosts.inventory import disk_verdicts
from hosts.models import StorageClass, VirtualMachine

from ..parameters import MigrationParameters
from .report import FAIL, PASS, WARN, _read

NOT_SEEN = (
    "no storage pool on {host} covers {directory}, and this page only reads: it is checked when you review "
    "the migration. A 'dir' pool there shows it at once."
)


def chosen_disks(vm: VirtualMachine, params: MigrationParameters) -> list[dict[str, Any]]:
    targets = set(params.disks)
    return [d for d in vm.disks if d["target"] in targets]


def _check_storage(report, vm, source, destination, params, judge_disk_plan: bool, probe: bool = True) -> None:
    """`probe`: may look at a directory no pool covers through a transient
    pool (never on a page opened with GET)."""

    def look(path: str) -> tuple[gateway.PathInfo | None, gateway.GatewayError | None]:
        return _read(lambda: gateway.path_info(connect_uri(destination), path, probe=probe), destination)

    def shared(disk, verdict) -> None:
        _check_shared_disk(report, disk, destination, look)

    def copied(disk) -> None:
        _check_copied_disk(report, disk, destination, params, look)

    def kept(disk, verdict) -> None:
        _check_kept_disk(report, disk, verdict, destination, look)

    if _check_disks(report, vm, source, params, judge_disk_plan, shared, copied, kept):
        _check_space(report, vm, destination, params, look)


def check_storage_stored(
    report, vm, source, destination, params, disk_users: dict[str, list[str]], *, verdicts=None, prefixes=None
) -> None:
    """The disk plan judged from the stored inventory alone: `disk_users`
    maps each image path of a VM stored on `destination` to those VMs. What
    only the destination can say (its pools, an image no VM uses, free space)
    is left to the job's re-check, and said so. `verdicts` (the VM's disk
    verdicts) and `prefixes` (the destination's) spare recomputing them."""
    prefixes = destination.prefixes if prefixes is None else prefixes

    def shared(disk, verdict) -> None:
        target, path = disk["target"], disk["source"]
        prefix = next((p for p in prefixes if path.startswith(p)), "")
        if prefix:
            report.add(f"disk {target}", PASS, f"{path} is on shared storage {destination.name} lists ({prefix})", "R7")
        else:
            report.add(
                f"disk {target}",
                FAIL,
                f"{path} is on shared storage of {source.name}, but {destination.name} lists no shared storage "
                f"prefix covering it: mount that storage on {destination.name} at the same path and add the prefix "
                "to the host, or choose another host.",
                "R7",
            )

    def copied(disk) -> None:
        target, path = disk["target"], disk["source"]
        users = disk_users.get(path)
        if users:
            report.add(
                f"disk {target}",
                FAIL,
                f"{path} already exists on {destination.name} and is a disk of {', '.join(users)} there; it is "
                "never replaced. Move that VM's disk, or migrate to another host.",
                "R6",
            )
        elif not params.create_images:
            report.add(
                f"disk {target}",
                WARN,
                f"{path} is copied into the image already on {destination.name}; whether it is there is checked "
                "when the migration starts.",
                "R6",
            )
        else:
            fmt = disk.get("format") or "raw"
            size = f", {disk['capacity_bytes'] // 2**20} MiB" if disk.get("capacity_bytes") else ""
            report.add(
                f"disk {target}",
                PASS,
                f"{path} ({fmt}{size}) is created and copied on {destination.name}; its storage pool there is "
                "checked when the migration starts",
                "R6",
            )

    def kept(disk, verdict) -> None:
        target, path = disk["target"], disk["source"]
        if disk_users.get(path):
            report.add(f"disk {target}", PASS, f"{path} exists on {destination.name} and is used there as it is", "R6")
            return
        fix = "select it under 'Disks to copy'" if verdict.migratable else verdict.reason
        report.add(
            f"disk {target}",
            WARN,
            f"{target} is not copied, so {destination.name} needs its own {path} ({fix}); the stored inventory "
            "cannot tell whether it is there: it is checked when the migration starts.",
            "R6",
        )

    if _check_disks(report, vm, source, params, True, shared, copied, kept, verdicts):
        need = sum(d.get("capacity_bytes") or 0 for d in chosen_disks(vm, params))
        report.add(
            "disk space",
            WARN,
            f"The free space on {destination.name} for {need // 2**20} MiB of images is not in the stored "
            "inventory; it is checked when the migration starts.",
            "R5",
        )


def _check_disks(report, vm, source, params, judge_disk_plan: bool, shared, copied, kept, verdicts=None) -> bool:
    """The storage class, then each data disk by its verdict: what needs no
    look at the destination is judged here, the rest by `shared`, `copied`
    and `kept`. True when disks are copied (their space is to be checked)."""
    verdicts = {v.target: v for v in verdicts or disk_verdicts(vm.disks, source.prefixes)}
    if vm.storage_class == StorageClass.SHARED:
        report.add("storage class", PASS, "every disk is on shared storage: nothing is copied", "R7")
    else:
        report.add("storage class", PASS, "local disks: they are copied to the destination", "R7")

    chosen = {d["target"] for d in chosen_disks(vm, params)}
    for disk in vm.disks:
        verdict = verdicts[disk["target"]]
        if not verdict.data:
            continue
        target = disk["target"]
        if target in chosen and not verdict.migratable:
            report.add(f"disk {target}", FAIL, f"{target} cannot be copied: {verdict.reason}.", "R6")
        elif verdict.kind == "network":
            report.add(f"disk {target}", PASS, f"{target} is network storage, reached by both hosts", "R7")
        elif verdict.shared:
            shared(disk, verdict)
        elif target in chosen:
            copied(disk)
        else:
            kept(disk, verdict)

    if vm.storage_class == StorageClass.NON_SHARED and judge_disk_plan and not chosen:
        report.add(
            "disks to copy",
            FAIL,
            "This VM has local disks but none is selected for copying; select the local disks to migrate.",
            "R13",
        )
    return bool(chosen)


def _not_seen(report, target: str, path: str, destination, requirement: str) -> None:
    where = NOT_SEEN.format(host=destination.name, directory=path.rpartition("/")[0] or "/")
    report.add(f"disk {target}", WARN, f"{path}: {where}", requirement)


def _check_shared_disk(report, disk, destination, look) -> None:
    target, path = disk["target"], disk["source"]
    info, error = look(path)
    if error:
        report.add(f"disk {target}", FAIL, f"Could not inspect {path} on {destination.name}: {error.message}", "R7")
    elif not info.seen:
        _not_seen(report, target, path, destination, "R7")
    elif not info.exists:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} is not visible on {destination.name}: mount the shared storage there at the "
            "same path, or add its path to that host's shared prefixes if it is already there.",
            "R7",
        )
    else:
        report.add(f"disk {target}", PASS, f"{path} is visible at the same path on {destination.name}", "R7")


def _inspect(report, disk, destination, look) -> gateway.PathInfo | None:
    """The destination's view of the disk's path; None (with a failed check,
    or a warning when it was not looked at) when it cannot be read or is a
    block device."""
    target, path = disk["target"], disk["source"]
    info, error = look(path)
    if error:
        report.add(f"disk {target}", FAIL, f"Could not inspect {path} on {destination.name}: {error.message}", "R6")
        return None
    if not info.seen:
        _not_seen(report, target, path, destination, "R6")
        return None
    if info.is_block_device:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} is a block device on {destination.name}; the destination image must be a file.",
            "R6",
        )
        return None
    return info


def _check_copied_disk(report, disk, destination, params, look) -> None:
    target, path = disk["target"], disk["source"]
    info = _inspect(report, disk, destination, look)
    if info is None:
        return
    fmt = disk.get("format") or "raw"
    if not params.create_images:
        if info.exists:
            report.add(f"disk {target}", PASS, f"{path} exists on {destination.name} and is copied into", "R6")
        else:
            report.add(
                f"disk {target}",
                FAIL,
                f"{path} does not exist on {destination.name} and 'Create destination images' is off; tick it, "
                f"or create the image there first (qemu-img create -f {fmt} {path} SIZE).",
                "R6",
            )
        return
    if info.exists and info.used_by:
        report.add(
            f"disk {target}",
            FAIL,
            f"{path} already exists on {destination.name} and is a disk of {', '.join(info.used_by)} there; it is "
            "never replaced. Move that VM's disk, or migrate to another host.",
            "R6",
        )
    elif info.exists:
        stale = (
            f"{path} already exists on {destination.name} and no VM there uses it: a stale copy of this disk, "
            "left by an earlier migration or by hand."
        )
        decision = params.replace_stale_images
        if decision:
            report.add(f"disk {target}", PASS, f"{stale} It is deleted, created afresh and copied.", "R6")
        elif decision is None:
            report.add(f"disk {target}", WARN, f"{stale} The next step asks whether to replace it.", "R6")
        else:
            report.add(
                f"disk {target}",
                FAIL,
                f"{stale} Tick 'Replace stale images on the destination' to delete it and copy afresh, or untick "
                "'Create destination images' to copy into it as it is.",
                "R6",
            )
    elif not info.pool:
        report.add(
            f"disk {target}",
            FAIL,
            f"No libvirt storage pool on {destination.name} covers {path.rpartition('/')[0]}; define a 'dir' "
            "pool there so the image can be created.",
            "R6",
        )
    else:
        size = f", {disk['capacity_bytes'] // 2**20} MiB" if disk.get("capacity_bytes") else ""
        report.add(f"disk {target}", PASS, f"{path} ({fmt}{size}) is created and copied on {destination.name}", "R6")


def _check_kept_disk(report, disk, verdict, destination, look) -> None:
    """A local disk that is not copied: the destination must have its own."""
    target, path = disk["target"], disk["source"]
    info = _inspect(report, disk, destination, look)
    if info is None:
        return
    if info.exists:
        report.add(f"disk {target}", PASS, f"{path} exists on {destination.name} and is used there as it is", "R6")
        return
    if verdict.migratable:
        fix = "select it under 'Disks to copy'"
    else:
        fix = f"{verdict.reason}; create it there (qemu-img create -f {disk.get('format') or 'raw'} {path} SIZE)"
    report.add(
        f"disk {target}",
        FAIL,
        f"{target} is not copied and {path} does not exist on {destination.name}: {fix}.",
        "R6",
    )


def _check_space(report, vm, destination, params, look) -> None:
    need = sum(d.get("capacity_bytes") or 0 for d in chosen_disks(vm, params))
    free = None
    for disk in chosen_disks(vm, params):
        info, error = look(disk["source"])
        if info is not None and info.pool_available_bytes is not None:
            free = info.pool_available_bytes
            break
        if error is not None and error.no_answer_s is not None:
            break  # the next disk would wait for the same silent host
    if free is None:
        report.add("disk space", WARN, f"Could not read free space on {destination.name}.", "R5")
    elif free < need:
        report.add(
            "disk space",
            FAIL,
            f"{destination.name} has {free // 2**20} MiB free for {need // 2**20} MiB of images; free space there.",
            "R5",
        )
    else:
        report.add("disk space", PASS, f"{free // 2**20} MiB free ≥ {need // 2**20} MiB of images", "R5")
