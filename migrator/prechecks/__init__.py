"""The health check before migrating: one report, each line pass, warn or
fail with a reason in plain words (R1–R7, R14, R16).

The wizard shows it per destination and on the review step; the job runs it
again just before it migrates, because hosts change in between. Host-level
checks live here; the NICs and the disks have modules of their own, and the
checks that need no libvirt call are in `inventory`, which also judges a move
from the stored inventory alone (`run_inventory_prechecks`, for plans).
"""

from __future__ import annotations

from typing import Any

from hosts import gateway, uris
from hosts.connection import connect_uri
from hosts.models import Host, VirtualMachine

from ..models import Migration
from ..parameters import MigrationParameters
from .inventory import (
    StoredInventory,
    add_notes,
    check_capacity,
    check_cpu_model,
    check_distinct,
    check_tls,
    name_taken,
    run_inventory_prechecks,
)
from .network import _check_networks
from .report import FAIL, PASS, WARN, Check, Facts, Report, SourceFacts, _read, unreachable
from .storage import _check_storage, chosen_disks

__all__ = [
    "FAIL",
    "PASS",
    "WARN",
    "Check",
    "Report",
    "SourceFacts",
    "StoredInventory",
    "chosen_disks",
    "read_source_facts",
    "run_inventory_prechecks",
    "run_prechecks",
]


def read_source_facts(vm: VirtualMachine, source: Host) -> SourceFacts:
    """What the source says about itself and the VM, for one report or for
    every destination of the wizard's destination step."""
    info, error = _read(lambda: gateway.host_info(connect_uri(source)), source)
    if error is not None:
        # One wait for a host that does not answer is enough.
        return SourceFacts(info, error)
    state, state_error = _read(lambda: gateway.vm_state(connect_uri(source), vm.uuid), source)
    return SourceFacts(info, None, state, state_error)


def run_prechecks(
    vm: VirtualMachine,
    source: Host,
    destination: Host,
    params: MigrationParameters | dict[str, Any] | None = None,
    *,
    exclude_migration: int | None = None,
    source_facts: SourceFacts | None = None,
    probe: bool = True,
) -> Report:
    """Every check for `vm` moving to `destination` under `params`; without
    parameters the disks are judged as if nothing were copied. The source is
    read unless `source_facts` (from read_source_facts) are given. With
    probe=False nothing is created on the destination (pages opened with
    GET): paths no storage pool covers are left to the review."""
    judge_disk_plan = params is not None
    params = MigrationParameters.from_record(params) if judge_disk_plan else MigrationParameters(create_images=False)
    report = Report()
    vm_dict = {**vm.details, "domain_type": vm.domain_type}

    # R2: one migration at a time, of a running VM.
    active = Migration.objects.active().for_vm(vm.uuid)
    if exclude_migration:
        active = active.exclude(pk=exclude_migration)
    active = active.first()
    if active:
        report.add("not migrating", FAIL, f"{vm.name} is already being migrated (migration #{active.pk}).", "R2")
    else:
        report.add("not migrating", PASS, "no other migration of this VM is in progress", "R2")

    if destination.pk == source.pk:
        report.add("destination", FAIL, "The destination is the source host; choose another host.")
        return report

    if source_facts is None:
        source_facts = read_source_facts(vm, source)
    facts = Facts(source_info=source_facts.info, source_error=source_facts.error)
    state, source_error = source_facts.vm_state, source_facts.error or source_facts.vm_state_error
    if source_error:
        report.add("source reachable", FAIL, unreachable(source, source_error), "R1")
    elif state is None:
        report.add("VM running", FAIL, f"{vm.name} is no longer on {source.name}; refresh the inventory.", "R2")
    elif state not in gateway.RUNNING_STATES:
        report.add("VM running", FAIL, f"{vm.name} is {state}; only running VMs are live-migrated.", "R2")
    else:
        report.add("VM running", PASS, f"{vm.name} is running on {source.name}", "R2")

    peer_refused = uris.refusal(destination.effective_peer_uri)
    if peer_refused:
        # The source's libvirtd (root) would open it for peer-to-peer.
        report.add(
            "destination peer URI",
            FAIL,
            f"The peer URI of {destination.name} is not allowed: {peer_refused} Edit the host to change it.",
            "R1",
        )
        return report
    facts.dest_info, facts.dest_error = _read(lambda: gateway.host_info(connect_uri(destination)), destination)
    if facts.dest_error:
        report.add("destination reachable", FAIL, unreachable(destination, facts.dest_error), "R1")
        return report
    report.add(
        "destination reachable",
        PASS,
        f"{destination.name} answers (libvirt {facts.dest_info.libvirt_version}); the source's own path to it "
        "is tested when the migration connects",
        "R1",
    )
    src, dst = facts.source_info, facts.dest_info
    if src is None:
        return report

    check_distinct(report, source, destination, src, dst)
    _check_cpu(report, vm, vm_dict, destination, src, dst)
    check_capacity(report, vm, destination, dst)
    _check_networks(report, vm, source, destination, src, dst)
    _check_name_free(report, vm, destination)
    _check_storage(report, vm, source, destination, params, judge_disk_plan, probe)
    check_tls(report, source, destination, params)
    add_notes(report, vm, params)
    return report


def _check_cpu(report, vm, vm_dict, destination, src, dst) -> None:
    if not check_cpu_model(report, src, dst):
        return
    verdict, message = _read(lambda: gateway.compare_guest_cpu(connect_uri(destination), vm_dict), destination)
    if message is not None:
        report.add("CPU model", FAIL, f"Could not compare CPUs on {destination.name}: {message.message}", "R3")
    elif not verdict.compatible:
        report.add("CPU model", FAIL, f"{destination.name} cannot run this VM's CPU: {verdict.reason}", "R3")
    else:
        report.add("CPU model", PASS, f"identical host CPUs ({src.cpu_vendor} {src.cpu_model}); {verdict.reason}", "R3")


def _check_name_free(report, vm, destination) -> None:
    by_uuid, error = _read(lambda: gateway.find_vm(connect_uri(destination), uuid=vm.uuid), destination)
    by_name, error2 = _read(lambda: gateway.find_vm(connect_uri(destination), name=vm.name), destination)
    if error or error2:
        report.add("name free", FAIL, f"Could not list VMs on {destination.name}: {(error or error2).message}")
    elif by_uuid or by_name:
        found = by_uuid or by_name
        name_taken(report, destination, found.name, found.uuid, found.state)
    else:
        report.add("name free", PASS, f"no VM of that name or UUID on {destination.name}")
