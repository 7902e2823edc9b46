"""Carries out one queued migration and records what really happened.

Order: claim the row, re-run the pre-checks, create destination images,
migrate (sampling progress, applying the operator's actions), then find out
where the VM actually runs and record that. A failure anywhere leaves the VM
running on its source, nothing paused on the destination, no image we created
left behind, and a record that says so (R17). Two cases leave the VM where it
is instead: a post-copy that lost its link (its memory is split between the
hosts: nothing is destroyed or resumed, the record is `interrupted` until
post-copy is resumed) and a host that does not answer (`attention`, until
reconciliation can tell). A record says succeeded only when libvirt did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Q
from django.utils import timezone

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.models import Host
from hosts.uris import require_allowed

from . import live
from .audit.models import AuditEvent
from .failures import Circumstances, ExplainedFailure, explain, with_libvirt_text
from .models import (
    WORKING_STATES,
    Migration,
    MigrationAction,
    MigrationState,
    completed_stats,
    final_sample_stats,
)
from .parameters import MigrationParameters, disk_words, timeout_fired_words
from .prechecks import run_prechecks

log = logging.getLogger(__name__)


class Lease:
    """Renews the record's heartbeat from a thread of its own while the
    worker holds it, through database restarts (a failed renewal is retried
    on the next beat with a fresh connection)."""

    def __init__(self, migration: Migration) -> None:
        self.migration = migration
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{migration.pk}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(settings.MIGRATION_HEARTBEAT_S):
                try:
                    self.migration.renew_lease()
                except DatabaseError:
                    log.warning("migration %s: could not renew the lease; retrying", self.migration.pk)
                    connections.close_all()
        finally:
            connections.close_all()


@dataclasses.dataclass
class Whereabouts:
    """The VM on both hosts after the job; None where the host did not answer."""

    source: gateway.Placement | None
    destination: gateway.Placement | None

    @property
    def postcopy(self) -> bool:
        return any(p is not None and p.postcopy for p in (self.source, self.destination))


class Executor:
    def __init__(self, migration: Migration) -> None:
        self.migration = migration
        self.parameters = MigrationParameters.from_record(migration.parameters)
        self.created_images: list[str] = []
        # Connect through the hosts' current URIs (TLS material included);
        # the snapshot URIs serve only when a host was removed.
        self.src_uri = connect_uri(migration.source) if migration.source else migration.source_uri
        self.dst_uri = connect_uri(migration.destination) if migration.destination else migration.destination_uri
        # Stall watch (in the monitor thread): when data last moved.
        self._moved_at = time.monotonic()
        self._last_processed = -1
        self._stalled_since: float | None = None
        self._stalls: list[str] = []
        self._started = time.monotonic()

    def run(self) -> Migration:
        m = self.migration
        if not m.claim(os.getpid(), socket.gethostname()):
            return m
        return self._holding(self._run)

    def resume(self) -> Migration:
        """Resume an interrupted post-copy (VIR_MIGRATE_POSTCOPY_RESUME)."""
        m = self.migration
        if not m.claim_resume(os.getpid(), socket.gethostname()):
            return m
        return self._holding(self._resume)

    def _holding(self, work) -> Migration:
        m = self.migration
        try:
            with Lease(m):
                work()
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
        if self._cancel_requested():
            self._settle_failure(None, cancelled=True, note="Cancelled before copying started.")
            return
        m.log("migrating", f"migrateToURI3 to {spec.dconnuri} (flags {spec.flags()}).")
        self._migrate(spec)

    def _resume(self) -> None:
        m = self.migration
        if m.destination is None:
            m.interrupt(m.error_message, "The destination was removed from the dashboard; post-copy cannot be resumed.")
            return
        where = self._whereabouts()
        if self._completed_by_itself(where):
            return
        spec = dataclasses.replace(self.parameters.to_spec(m.destination), postcopy_resume=True)
        m.log("resuming", f"Resuming post-copy to {spec.dconnuri}.")
        self._migrate(spec)

    def _migrate(self, spec: gateway.MigrationSpec) -> None:
        m = self.migration
        require_allowed(spec.dconnuri, host_name=m.destination_name, what="peer URI")  # the source libvirtd opens it
        run = gateway.MigrationRun(
            self.src_uri,
            m.vm_uuid,
            spec,
            on_sample=self._on_sample,
            should_abort=self._cancel_requested,
            pending_actions=self._pending_actions,
            on_action=self._on_action,
            on_postcopy=m.mark_postcopy,
            on_timeout=self._on_timeout,
            # The monitor thread's callbacks use its own database connection:
            # a failed one is dropped, and the next tick opens a fresh one.
            on_callback_error=lambda exc: connections.close_all(),
            on_monitor_end=connections.close_all,
            sample_interval_s=settings.MIGRATION_SAMPLE_INTERVAL_S,
        )
        outcome = run.run()
        # The migration is over inside libvirt whatever happens next: its
        # record must be written even through a database restart.
        _retrying_database(lambda: self._record_outcome(spec, run, outcome))

    def _record_outcome(
        self, spec: gateway.MigrationSpec, run: gateway.MigrationRun, outcome: gateway.MigrationOutcome
    ) -> None:
        m = self.migration
        applied = {
            **outcome.applied,
            "pin_mode": outcome.pin_mode,
            "timeout_action_taken": outcome.timeout_action_taken,
            "timeout_fired": outcome.timeout_fired,
            "compression": spec.compression or None,
        }
        if spec.postcopy_resume:
            applied = {**m.applied_parameters, "resumed_flags": outcome.applied.get("flags")}
        Migration.objects.filter(pk=m.pk).update(applied_parameters=applied)
        m.refresh_from_db()
        if m.state not in WORKING_STATES:
            return  # settled meanwhile (a retried write that had gone through)
        if outcome.completed:
            self._settle_success(run, outcome)
            return
        note = ""
        if outcome.timeout_action_taken == "abort":
            note = timeout_fired_words(outcome.timeout_fired or "completion", "abort", self.parameters)
        cancelled = run.aborted and m.state == MigrationState.CANCELLING
        self._settle_failure(outcome.error, cancelled=cancelled, note=note, outcome=outcome)

    def _on_sample(self, stats: dict[str, Any]) -> None:
        read_at = time.time()
        sample = self.migration.progress(stats)
        payload = sample.as_dict()
        payload["stalled_s"] = self._watch_stall(stats)
        live.publish_sample(self.migration, payload, read_at)

    def _watch_stall(self, stats: dict[str, Any]) -> int:
        """Seconds since data last moved, once that is a stall; 0 otherwise.
        libvirt keeps reporting the last throughput through an outage: only
        the processed counter standing still shows it."""
        m, now = self.migration, time.monotonic()
        processed = int(stats.get("data_processed") or 0)
        if processed > self._last_processed:
            self._last_processed, self._moved_at = processed, now
            if self._stalled_since is not None:
                lasted = now - self._stalled_since + settings.MIGRATION_STALL_S
                at = self._stalled_since - self._started - settings.MIGRATION_STALL_S
                self._stalls.append(f"nothing moved for {lasted:.0f} s from {max(at, 0):.0f} s")
                m.log("moving", f"Data moves again after {lasted:.0f} s.")
                self._stalled_since = None
            return 0
        idle = now - self._moved_at
        if idle < settings.MIGRATION_STALL_S:
            return 0
        if self._stalled_since is None:
            self._stalled_since = now
            m.log(
                "stalled",
                f"No data moved for {settings.MIGRATION_STALL_S:.0f} s: the hosts may have lost each other.",
            )
        return int(idle)

    def _cancel_requested(self) -> bool:
        return Migration.objects.filter(pk=self.migration.pk, state=MigrationState.CANCELLING).exists()

    def _pending_actions(self) -> list[gateway.JobAction]:
        pending = MigrationAction.objects.filter(migration_id=self.migration.pk, applied_at__isnull=True)
        return [gateway.JobAction(a.pk, a.kind, a.value) for a in pending]

    def _on_timeout(self, fired: str, action: str, refused: str) -> None:
        """A timeout took its action (in the monitor thread): the timeline
        and the audit log say which one, and what came of it."""
        m = self.migration
        words = timeout_fired_words(fired, action, self.parameters)
        if refused:
            words = f"{words[:-1]}, but libvirt refused: {refused}"
        m.log("timeout", words)
        if action == "postcopy" and not refused:
            # libvirt switched: from here on the destination runs the VM,
            # whether or not a reading catches the source paused for it.
            m.mark_postcopy()
        self._audit(
            "migration.timeout",
            timeout=fired,
            timeout_action=action,
            policy=self.parameters.policy,
            timeout_s=self.parameters.timeout_s if fired == "completion" else self.parameters.progress_timeout_s,
            result=refused or "taken",
        )
        m.announce()

    def _on_action(self, action: gateway.JobAction, ok: bool, message: str, stats: dict[str, Any]) -> None:
        m = self.migration
        row = MigrationAction.objects.get(pk=action.id)
        elapsed = stats.get("time_elapsed")
        MigrationAction.objects.filter(pk=action.id).update(
            applied_at=timezone.now(), ok=ok, result=message, elapsed_ms=elapsed
        )
        m.log("action" if ok else "action refused", f"{row.label} (asked by {row.requested_by_username}): {message}")
        if ok and action.kind == "postcopy":
            # libvirt switched: from here on the destination runs the VM,
            # whether or not a reading catches the source paused for it.
            m.mark_postcopy()
        m.announce()

    # ------------------------------------------------------------ images

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

    def _settle_success(
        self, run: gateway.MigrationRun | None, outcome: gateway.MigrationOutcome | None, note: str = ""
    ) -> None:
        m = self.migration
        stats = self._safe(lambda: gateway.completed_job_stats(self.dst_uri, m.vm_uuid)) or {}
        final = completed_stats(outcome.stats if outcome else {}, stats)
        # The last reading can predate the end by a whole sampling interval
        # (a sub-second migration has one or two): the chart ends on the truth.
        self._on_sample(final_sample_stats(final))
        notes = ([note] if note else []) + self._stall_notes()
        taken = outcome.timeout_action_taken if outcome else ""
        fired = (outcome.timeout_fired if outcome else "") or "completion"
        if taken == "suspend":
            notes.append(f"{timeout_fired_words(fired, taken, self.parameters)} The downtime includes that pause.")
        elif taken == "postcopy":
            notes.append(timeout_fired_words(fired, taken, self.parameters))
        if run is not None and outcome is not None and outcome.pin_mode == "emulator":
            try:
                run.restore_pin_on(self.dst_uri)
                notes.append(
                    "Migration threads ran pinned to CPUs "
                    f"{self.parameters.pin_cpus} (emulator pinning); the pin was removed on the destination."
                )
            except gateway.GatewayError as error:
                notes.append(f"Could not remove the emulator pin on the destination: {error.message}")
        notes.extend(self._leave_one_definition())
        state = self._safe(lambda: gateway.vm_state(self.dst_uri, m.vm_uuid))
        notes.append(f"The VM is {state or 'not found'} on {m.destination_name}.")
        if state in gateway.RUNNING_STATES:
            notes.extend(self._remove_source_images())
        m.finish(final, note=" ".join(notes))

    def _leave_one_definition(self) -> list[str]:
        """UNDEFINE_SOURCE, when the job ended outside libvirt's own call (a
        resumed post-copy, a reconciled job): the VM is defined on one host."""
        m = self.migration
        spec = self.parameters.to_spec(m.destination) if m.destination else None
        if spec is not None and not spec.undefine_source:
            return []
        if self._safe(lambda: gateway.forget_inactive_copy(self.src_uri, m.vm_uuid)):
            return [f"Removed the VM's shut-off definition from {m.source_name}."]
        return []

    def _stall_notes(self) -> list[str]:
        if self._stalled_since is not None:
            idle = time.monotonic() - self._moved_at
            self._stalls.append(f"nothing moved for the last {idle:.0f} s")
            self._stalled_since = None
        return [f"The migration stalled: {'; '.join(self._stalls)}."] if self._stalls else []

    def _whereabouts(self, patience_s: float = 0.0) -> Whereabouts:
        """Both hosts' view; a host that does not answer is asked again for
        `patience_s` (a daemon that restarts answers within seconds)."""
        m = self.migration
        deadline = time.monotonic() + patience_s
        while True:
            where = Whereabouts(
                self._placement(self.src_uri, m.source_name), self._placement(self.dst_uri, m.destination_name)
            )
            if (where.source is not None and where.destination is not None) or time.monotonic() >= deadline:
                return where
            time.sleep(1.0)

    def _placement(self, uri: str, name: str) -> gateway.Placement | None:
        try:
            return gateway.placement(uri, self.migration.vm_uuid)
        except gateway.GatewayError as error:
            log.warning("migration %s: %s does not answer: %s", self.migration.pk, name, error)
            return None

    def _completed_by_itself(self, where: Whereabouts) -> bool:
        """The job completed inside libvirt although its call failed or its
        worker died (a post-copy whose stream came back, a worker killed
        mid-job): record the success, but only on libvirt's word, its
        completed-job statistics on either host."""
        m = self.migration
        src, dst = where.source, where.destination
        if dst is None or not dst.running or dst.postcopy or src is None or src.running or src.postcopy:
            return False
        stats = self._safe(lambda: gateway.completed_job_stats(self.dst_uri, m.vm_uuid)) or {}
        if not stats and src.state is not None:
            # The source keeps its outgoing job's statistics while the VM stays
            # defined there; only an outgoing migration's count.
            outgoing = self._safe(lambda: gateway.completed_job_stats(self.src_uri, m.vm_uuid)) or {}
            if outgoing.get("operation") == gateway.JobOperation.MIGRATION_OUT or src.migrated_away:
                stats = outgoing
        # "shut off (migrated)" on the source is libvirt's word too, when the
        # statistics were already read away.
        if not stats and not src.migrated_away:
            return False
        m.log("completed", "libvirt reports the migration completed.")
        self._settle_success(
            None,
            gateway.MigrationOutcome(True, stats),
            note="libvirt completed the migration after its call had reported an error"
            + (" (post-copy went on when the hosts saw each other again)." if m.postcopy_started_at else "."),
        )
        return True

    def _wait_for_answer(self, uri: str, name: str, patience_s: float) -> gateway.Placement | None:
        """Ask a host that does not answer again, every few seconds, for `patience_s`."""
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            time.sleep(2.0)
            where = self._placement(uri, name)
            if where is not None:
                return where
        return None

    def _delete_created_images(self) -> list[str]:
        """The images this migration created on the destination: the ones
        this run made, or (settled later, by another process) the ones its
        timeline says it made and no VM there uses."""
        m = self.migration
        paths = list(self.created_images)
        if not paths and self.parameters.create_images:
            made = m.events.filter(state="image").values_list("message", flat=True)
            paths = [
                d["source"] for d in self._disk_plan() if any(t.startswith(f"Created {d['source']} ") for t in made)
            ]
        notes = []
        for path in paths:
            info = self._safe(lambda p=path: gateway.path_info(self.dst_uri, p))
            if info is None or not info.exists or info.used_by:
                continue
            if self._safe(lambda p=path: gateway.delete_volume(self.dst_uri, p) or True):
                notes.append(f"Deleted {path} created on {m.destination_name}.")
        return notes

    def _settle_failure(
        self,
        error: gateway.GatewayError | None,
        *,
        cancelled: bool = False,
        note: str = "",
        outcome: gateway.MigrationOutcome | None = None,
        watch_s: float | None = None,
    ) -> None:
        """Find where the VM is and record it truthfully: a success libvirt
        confirms, an interrupted post-copy (touch nothing), a host that does
        not answer (needs attention), or a failure cleaned up on the destination."""
        m = self.migration
        m.refresh_from_db()
        where = self._whereabouts(patience_s=SETTLE_PATIENCE_S)
        src, dst = where.source, where.destination
        postcopy = bool(where.postcopy or m.postcopy_started_at or (outcome and outcome.postcopy_started))
        seen = Circumstances(
            m.source_name,
            m.destination_name,
            source_answers=src is not None,
            destination_answers=dst is not None,
            source_connection_lost=bool(outcome and outcome.source_connection_lost),
            postcopy_started=postcopy,
        )
        if error is not None and not isinstance(error, ExplainedFailure):
            error = with_libvirt_text(explain(error, seen), error)
        if self._completed_by_itself(where):
            return
        notes = [note] if note else []
        notes.extend(self._stall_notes())
        if postcopy and dst is not None and dst.state is None:
            m.need_attention(
                error or "Post-copy ended without the VM on the destination.",
                " ".join(
                    [
                        *notes,
                        f"Post-copy had started, but {m.destination_name} no longer has the VM; "
                        f"{m.source_name} holds {src.state if src else 'an unknown state'}. Check the VM by hand.",
                    ]
                ),
            )
            return
        if postcopy and outcome is not None and outcome.resume_gave_up:
            notes.append(
                f"Resuming post-copy moved no data for {gateway.RESUME_PROGRESS_S:.0f} s, so it was given up: "
                f"{m.destination_name}'s QEMU does not take the recovery (a guest waiting for a page that is still "
                f"on {m.source_name} can block QEMU's monitor, which software emulation makes likely)."
            )
        if postcopy:
            m.interrupt(
                error or "Post-copy did not complete.",
                " ".join(
                    [
                        *notes,
                        f"Post-copy was interrupted: the VM runs on {m.destination_name} while part of its memory is "
                        f"still on {m.source_name}. Do not stop, destroy or resume it on either host. Once the hosts "
                        "see each other again, resume post-copy.",
                    ]
                ),
            )
            return
        if src is None:
            m.need_attention(
                error or f"{m.source_name} does not answer.",
                " ".join(
                    [
                        *notes,
                        f"{m.source_name} does not answer, so where the VM runs is not known yet; "
                        "the dashboard keeps checking and settles the record when it can.",
                    ]
                ),
            )
            return
        if src.state == "paused":
            # A suspend (the timeout's or a force complete) that then failed
            # must not leave the guest paused; never after a post-copy switch.
            self._safe(lambda: gateway.resume_vm(self.src_uri, m.vm_uuid))
            src = self._placement(self.src_uri, m.source_name) or src
        if src.running:
            # The VM runs on the source: any copy on the destination is stale,
            # and its libvirt may still start it (a Finish it received before
            # the failure), so it goes whatever its state, once it can be reached.
            if dst is None:
                patience = DESTINATION_WATCH_S if watch_s is None else watch_s
                dst = self._wait_for_answer(self.dst_uri, m.destination_name, patience)
                if dst is not None:
                    # Back from a hang, its libvirt first works off what it had
                    # received (a late Finish defines and starts the copy).
                    time.sleep(LATE_FINISH_S)
                    dst = self._placement(self.dst_uri, m.destination_name) or dst
            if dst is None:
                m.need_attention(
                    error or f"{m.destination_name} does not answer.",
                    " ".join(
                        [
                            *notes,
                            f"The VM runs on {m.source_name}. {m.destination_name} does not answer: its incoming "
                            "copy may still be there, and its libvirt could still start it. The dashboard removes "
                            f"that copy as soon as {m.destination_name} answers.",
                        ]
                    ),
                    vm_location=m.source_name,
                )
                return
            if dst.state is not None and self._safe(lambda: gateway.remove_stale_copy(self.dst_uri, m.vm_uuid)):
                late = " (its libvirt had started it after the migration failed)" if dst.running else ""
                notes.append(f"Removed the {dst.state} copy left on {m.destination_name}{late}.")
            notes.extend(self._delete_created_images())
            notes.append(f"The VM is still running on {m.source_name}.")
            location = m.source_name
        elif dst is not None and dst.running:
            m.need_attention(
                error or "libvirt did not confirm the migration.",
                " ".join(
                    [
                        *notes,
                        f"The VM runs on {m.destination_name} but libvirt did not report the migration "
                        f"completed; {m.source_name} has it {src.state or 'not defined'}. Check it before acting.",
                    ]
                ),
            )
            return
        else:
            notes.append(
                f"Warning: the VM is {src.state or 'not found'} on {m.source_name} and "
                f"{(dst.state or 'not found') if dst else 'unknown'} on {m.destination_name}; check it by hand."
            )
            location = "unknown"
        if cancelled:
            m.mark_cancelled(vm_location=location, note=" ".join(notes))
        else:
            m.fail(error or "The migration did not complete.", vm_location=location, note=" ".join(notes))

    def settle_orphan(self, wait_s: float) -> None:
        """Settle this record after its worker died: wait for (or abort) the job
        still running inside the source libvirtd, then record where the VM runs."""
        m = self.migration
        m.log(
            "reconcile",
            f"The worker {m.worker_pid}@{m.worker_host} stopped renewing its lease; asking "
            f"{m.source_name} for the job.",
        )
        with Lease(m):
            try:
                deadline = time.monotonic() + wait_s
                while gateway.active_job(self.src_uri, m.vm_uuid):
                    cancelling = m.state == MigrationState.CANCELLING
                    if (cancelling or time.monotonic() > deadline) and m.postcopy_started_at is None:
                        gateway.abort_job(self.src_uri, m.vm_uuid)
                    time.sleep(0.5)
                    m.refresh_from_db()
            except gateway.GatewayError as error:
                log.warning("reconcile %s: %s", m.pk, error)
            error = ExplainedFailure("The worker running this migration stopped before the migration ended.")
            self._settle_failure(error, cancelled=m.state == MigrationState.CANCELLING)
        m.refresh_from_db()
        if m.state == MigrationState.SUCCEEDED:
            Migration.objects.filter(pk=m.pk).update(
                outcome_note=f"The worker stopped, but the migration completed inside libvirt. {m.outcome_note}"
            )
            m.refresh_from_db()
        self._refresh_inventory()

    def recheck(self) -> None:
        """An interrupted or needs-attention record: settle it once the hosts
        tell where the VM is (post-copy that finished by itself, a host that
        answers again). An interrupted post-copy stays as it is otherwise."""
        m = self.migration
        where = self._whereabouts()
        if self._completed_by_itself(where):
            m.refresh_from_db()
            self._refresh_inventory()
            return
        if m.state == MigrationState.ATTENTION and where.source is not None and where.destination is not None:
            if where.postcopy:
                m.interrupt(m.error_message or "Post-copy did not complete.", m.outcome_note)
            else:
                # The maintenance pass asks once per round; the job itself waited already.
                self._settle_failure(ExplainedFailure(m.error_message or "The migration did not complete."), watch_s=0)
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
                with contextlib.suppress(gateway.GatewayError):
                    inventory.refresh_vm(host, m.vm_uuid)


DATABASE_RETRY_S = 120.0
# How long a failed job waits for a host that does not answer before it
# records "needs attention" (a restarting daemon answers within seconds).
SETTLE_PATIENCE_S = 8.0
# How long a failed job keeps asking a destination that does not answer
# before it leaves the record "needs attention" to the maintenance pass.
DESTINATION_WATCH_S = 120.0
LATE_FINISH_S = 5.0


def _retrying_database(write, budget_s: float = DATABASE_RETRY_S) -> None:
    """Run `write` until the database takes it (a restart drops every
    connection; Django does not reconnect by itself outside a request)."""
    deadline = time.monotonic() + budget_s
    delay = 0.5
    while True:
        try:
            write()
            return
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            log.warning("the database does not answer; retrying in %.1f s", delay, exc_info=True)
            connections.close_all()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# ------------------------------------------------------------ reconciliation


def _lease_expired() -> Q:
    cutoff = timezone.now() - timedelta(seconds=settings.MIGRATION_LEASE_S)
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)


def take_over(m: Migration) -> bool:
    """Claim a record whose lease ran out, so that one reconciler (of any
    number, on any machine) settles it."""
    won = (
        Migration.objects.filter(_lease_expired(), pk=m.pk, state__in=WORKING_STATES).update(
            heartbeat_at=timezone.now(), worker_pid=os.getpid(), worker_host=socket.gethostname()
        )
        == 1
    )
    m.refresh_from_db()
    return won


def _executor_or_none(m: Migration) -> Executor | None:
    """An executor for `m`, or None (logged) when a host's URI cannot be used
    (refused by the allow-list, TLS material unreadable): one such record
    must not stop the rest of maintenance; it is tried again next round."""
    try:
        return Executor(m)
    except gateway.GatewayError as error:
        log.warning("Migration #%s cannot be settled now: %s", m.pk, error.message)
        return None


def reconcile(wait_s: float = 600) -> list[Migration]:
    """Settle records whose worker stopped: a running record whose lease ran
    out (killing the client does not stop a peer-to-peer migration: the job
    goes on inside the source libvirtd), an interrupted or needs-attention
    record the hosts can now settle."""
    settled = []
    for m in Migration.objects.filter(_lease_expired(), state__in=WORKING_STATES):
        if take_over(m):
            executor = _executor_or_none(m)
            if executor is not None:
                executor.settle_orphan(wait_s)
                settled.append(m)
    for m in Migration.objects.filter(state__in=[MigrationState.INTERRUPTED, MigrationState.ATTENTION]):
        executor = _executor_or_none(m)
        if executor is None:
            continue
        executor.recheck()
        m.refresh_from_db()
        if m.state not in (MigrationState.INTERRUPTED, MigrationState.ATTENTION):
            settled.append(m)
    return settled
