"""Carries out one queued migration and records what really happened.

Order: claim the row, re-run the pre-checks, create destination images,
migrate (sampling progress), then find out where the VM actually runs and
record that. A failure anywhere leaves the VM running on its source, nothing
paused on the destination, no image we created left behind, and a record that
says so (R17).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connections

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.models import Host

from . import live
from .audit.models import AuditEvent
from .models import Migration, MigrationState, completed_stats, final_sample_stats
from .parameters import MigrationParameters, disk_words
from .prechecks import run_prechecks

log = logging.getLogger(__name__)


class Executor:
    def __init__(self, migration: Migration) -> None:
        self.migration = migration
        self.parameters = MigrationParameters.from_record(migration.parameters)
        self.created_images: list[str] = []
        # Connect through the hosts' current URIs (TLS material included);
        # the snapshot URIs serve only when a host was removed.
        self.src_uri = connect_uri(migration.source) if migration.source else migration.source_uri
        self.dst_uri = connect_uri(migration.destination) if migration.destination else migration.destination_uri

    def run(self) -> Migration:
        m = self.migration
        if not m.claim(os.getpid(), socket.gethostname()):
            return m
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - the record must say what happened, whatever it was
            log.exception("migration %s crashed", m.pk)
            self._settle_failure(gateway.GatewayError(f"Internal error in the worker: {exc}"))
        finally:
            m.refresh_from_db()
            self._refresh_inventory()
        return m

    # ------------------------------------------------------------ phases

    def _run(self) -> None:
        m = self.migration
        source, destination = m.source, m.destination
        if source is None or destination is None or m.vm is None:
            m.fail(
                "The host or VM was removed from the dashboard before the migration started.", vm_location=m.source_name
            )
            return
        report = run_prechecks(m.vm, source, destination, self.parameters, exclude_migration=m.pk)
        m.log("prechecks", report.summary())
        # Beside the reviewed report, never over it: the record keeps what the operator saw.
        Migration.objects.filter(pk=m.pk).update(job_precheck_report=report.as_list())
        if not report.ok:
            m.fail(
                f"Pre-checks failed just before migrating: {report.summary()}",
                vm_location=source.name,
                note="Nothing was changed; the VM keeps running on the source.",
            )
            return
        if self._cancel_requested():
            m.mark_cancelled(vm_location=source.name, note="Cancelled before copying started; the VM was not touched.")
            return
        self._create_images(destination)
        spec = self.parameters.to_spec(destination)
        run = gateway.MigrationRun(
            self.src_uri,
            m.vm_uuid,
            spec,
            on_sample=self._on_sample,
            should_abort=self._cancel_requested,
            # The monitor thread's samples and cancel checks open its own database connection.
            on_monitor_end=connections.close_all,
            sample_interval_s=settings.MIGRATION_SAMPLE_INTERVAL_S,
        )
        m.log("migrating", f"migrateToURI3 to {spec.dconnuri} (flags {spec.flags()}).")
        outcome = run.run()
        Migration.objects.filter(pk=m.pk).update(
            applied_parameters={
                **outcome.applied,
                "pin_mode": outcome.pin_mode,
                "timeout_action_taken": outcome.timeout_action_taken,
                "compression": spec.compression or None,
            }
        )
        m.refresh_from_db()
        if outcome.completed:
            self._settle_success(run, outcome)
        elif run.aborted and m.state == MigrationState.CANCELLING:
            self._settle_failure(outcome.error, cancelled=True)
        else:
            if outcome.timeout_action_taken == "abort":
                note = f"Timeout of {spec.timeout_s} s reached: aborted as requested."
                self._settle_failure(outcome.error, note=note)
            else:
                self._settle_failure(outcome.error)

    def _on_sample(self, stats: dict[str, Any]) -> None:
        read_at = time.time()
        sample = self.migration.progress(stats)
        live.publish_sample(self.migration, sample.as_dict(), read_at)

    def _cancel_requested(self) -> bool:
        return Migration.objects.filter(pk=self.migration.pk, state=MigrationState.CANCELLING).exists()

    def _disk_plan(self) -> list[dict[str, Any]]:
        m, p = self.migration, self.parameters
        chosen = set(p.disks)
        plan = p.disk_plan
        if not plan and "disk_plan" not in m.parameters:  # records queued before the plan was stored
            plan = [d for d in (m.vm.disks if m.vm else []) if d["target"] in chosen]
        return [d for d in plan if d["target"] in chosen]

    def _create_images(self, destination: Host) -> None:
        m = self.migration
        if not self.parameters.create_images:
            return
        for disk in self._disk_plan():
            path = disk["source"]
            if self.parameters.replace_stale_images:
                # Re-checked here: a VM defined there since the review keeps its disk.
                info = gateway.path_info(self.dst_uri, path)
                if info.exists and not info.used_by and gateway.delete_volume(self.dst_uri, path):
                    m.log("image", f"Deleted the stale image {path} on {destination.name}, as chosen.")
                    self._audit("migration.stale_image_removed", host=destination.name, path=path)
            gateway.create_volume(self.dst_uri, path, disk.get("format") or "raw", int(disk.get("capacity_bytes") or 0))
            self.created_images.append(path)
            m.log("image", f"Created {path} ({disk_words(disk)}) on {destination.name}.")

    def _remove_source_images(self) -> list[str]:
        """After a certain success, delete the source's copies of the copied
        images. Anything uncertain (the source not answering, the VM still
        defined there, another VM using the image) keeps the image."""
        m = self.migration
        plan = self._disk_plan()
        if not plan or not self.parameters.remove_source_images:
            return []
        try:
            still_there = gateway.vm_state(self.src_uri, m.vm_uuid)
        except gateway.GatewayError as error:
            return [f"The source images were kept: {m.source_name} did not answer ({error.message})."]
        if still_there is not None:
            return [f"The source images were kept: the VM is still defined on {m.source_name}."]
        notes = []
        for disk in plan:
            path = disk["source"]
            try:
                info = gateway.path_info(self.src_uri, path)
                if info.used_by:
                    notes.append(f"Kept {path} on {m.source_name}: it is a disk of {', '.join(info.used_by)} there.")
                    continue
                if gateway.delete_volume(self.src_uri, path):
                    where = f"{m.source_name}; the VM uses its copy on {m.destination_name}"
                    m.log("cleanup", f"Removed {path} from {where}.")
                    self._audit("migration.source_image_removed", host=m.source_name, path=path)
                    notes.append(f"Removed {path} from {m.source_name}.")
            except gateway.GatewayError as error:
                notes.append(f"Could not remove {path} from {m.source_name}: {error.message}")
        return notes

    def _audit(self, action: str, **details: Any) -> None:
        m = self.migration
        AuditEvent.record(action, actor=m.started_by, obj=m, details={**details, "via": "worker"})

    # ------------------------------------------------------------ outcomes

    def _settle_success(self, run: gateway.MigrationRun, outcome: gateway.MigrationOutcome) -> None:
        m = self.migration
        stats = {}
        try:
            stats = gateway.completed_job_stats(self.dst_uri, m.vm_uuid)
        except gateway.GatewayError:
            pass
        final = completed_stats(outcome.stats, stats)
        # The last reading can predate the end by a whole sampling interval
        # (a sub-second migration has one or two): the chart ends on the truth.
        self._on_sample(final_sample_stats(final))
        notes = []
        if outcome.timeout_action_taken == "suspend":
            notes.append("The timeout suspended the VM so the copy could finish; the downtime includes that pause.")
        elif outcome.timeout_action_taken == "postcopy":
            notes.append("The timeout switched the migration to post-copy.")
        if outcome.pin_mode == "emulator":
            try:
                run.restore_pin_on(self.dst_uri)
                notes.append(
                    "Migration threads ran pinned to CPUs "
                    f"{self.parameters.pin_cpus} (emulator pinning); the pin was removed on the destination."
                )
            except gateway.GatewayError as error:
                notes.append(f"Could not remove the emulator pin on the destination: {error.message}")
        state = self._safe(lambda: gateway.vm_state(self.dst_uri, m.vm_uuid))
        notes.append(f"The VM is {state or 'not found'} on {m.destination_name}.")
        if state in gateway.RUNNING_STATES:
            notes.extend(self._remove_source_images())
        m.finish(final, note=" ".join(notes))

    def _settle_failure(self, error, *, cancelled: bool = False, note: str = "") -> None:
        """Find where the VM is, clean the destination, and record it truthfully."""
        m = self.migration
        on_source = self._safe(lambda: gateway.vm_state(self.src_uri, m.vm_uuid))
        on_dest = self._safe(lambda: gateway.vm_state(self.dst_uri, m.vm_uuid))
        if on_dest in gateway.RUNNING_STATES and on_source not in gateway.RUNNING_STATES:
            # libvirt reported an error after the switch-over: the VM moved.
            stats = self._safe(lambda: gateway.completed_job_stats(self.dst_uri, m.vm_uuid)) or {}
            m.finish(
                stats,
                note=f"libvirt reported '{error}' after the switch-over, but the VM runs on {m.destination_name}.",
            )
            return
        notes = [note] if note else []
        if on_dest is not None and on_dest not in gateway.RUNNING_STATES:
            if self._safe(lambda: gateway.destroy_leftover(self.dst_uri, m.vm_uuid)):
                notes.append(f"Removed the paused copy left on {m.destination_name}.")
        for path in self.created_images:
            if self._safe(lambda p=path: gateway.delete_volume(self.dst_uri, p) or True):
                notes.append(f"Deleted {path} created on {m.destination_name}.")
        if on_source == "paused":
            # A suspend-on-timeout that then failed must not leave the guest paused.
            self._safe(lambda: gateway.resume_vm(self.src_uri, m.vm_uuid))
            on_source = self._safe(lambda: gateway.vm_state(self.src_uri, m.vm_uuid))
        if on_source in gateway.RUNNING_STATES:
            notes.append(f"The VM is still running on {m.source_name}.")
            location = m.source_name
        else:
            notes.append(
                f"Warning: the VM is {on_source or 'not found'} on {m.source_name} and "
                f"{on_dest or 'not found'} on {m.destination_name}; check it by hand."
            )
            location = "unknown"
        if cancelled:
            m.mark_cancelled(vm_location=location, note=" ".join(notes))
        else:
            m.fail(error, vm_location=location, note=" ".join(notes))

    def settle_orphan(self, wait_s: float) -> None:
        """Settle this record after its worker died: wait for (or abort) the job
        still running inside the source libvirtd, then record where the VM runs."""
        m = self.migration
        m.log("reconcile", f"Worker {m.worker_pid}@{m.worker_host} is gone; asking {m.source_name} for the job.")
        try:
            deadline = time.monotonic() + wait_s
            while gateway.active_job(self.src_uri, m.vm_uuid):
                if m.state == MigrationState.CANCELLING or time.monotonic() > deadline:
                    gateway.abort_job(self.src_uri, m.vm_uuid)
                time.sleep(0.5)
                m.refresh_from_db()
        except gateway.GatewayError as error:
            log.warning("reconcile %s: %s", m.pk, error)
        on_source = self._safe(partial(gateway.vm_state, self.src_uri, m.vm_uuid))
        on_dest = self._safe(partial(gateway.vm_state, self.dst_uri, m.vm_uuid))
        if on_dest in gateway.RUNNING_STATES and on_source not in gateway.RUNNING_STATES:
            stats = self._safe(partial(gateway.completed_job_stats, self.dst_uri, m.vm_uuid)) or {}
            m.finish(
                stats,
                note="The worker died, but the migration completed inside libvirt; "
                f"the VM runs on {m.destination_name}.",
            )
        else:
            error = gateway.GatewayError("The worker running this migration died; the migration did not complete.")
            self._settle_failure(error, cancelled=m.state == MigrationState.CANCELLING)
        m.refresh_from_db()
        self._refresh_inventory()

    def _safe(self, fn):
        try:
            return fn()
        except gateway.GatewayError as error:
            log.warning("migration %s: %s", self.migration.pk, error)
            return None

    def _refresh_inventory(self) -> None:
        m = self.migration
        for host in (m.source, m.destination):
            if host is not None:
                try:
                    inventory.refresh_vm(host, m.vm_uuid)
                except gateway.GatewayError:
                    pass


# ------------------------------------------------------------ reconciliation


def _worker_alive(m: Migration) -> bool:
    if m.worker_host and m.worker_host != socket.gethostname():
        # Another machine's worker: that machine's reconciler settles it.
        return True
    if not m.worker_pid:
        return False
    try:
        os.kill(m.worker_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(wait_s: float = 600) -> list[Migration]:
    """Finish records whose worker died mid-migration.

    Killing the client does not stop a peer-to-peer migration: the job goes
    on inside the source libvirtd. Ask the source for it, abort it if a cancel
    was requested (otherwise let it end), then record where the VM runs.
    """
    settled = []
    for m in Migration.objects.filter(state__in=[MigrationState.RUNNING, MigrationState.CANCELLING]):
        if _worker_alive(m):
            continue
        Executor(m).settle_orphan(wait_s)
        settled.append(m)
    return settled
