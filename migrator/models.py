"""Migration records: the state machine, the live samples and the dirty-rate readings.

A Migration row owns its state changes (`claim`, `progress`, `finish`,
`fail`, `request_cancel`, `mark_cancelled`). Every transition is a
conditional UPDATE so a worker, a cancel button and the reconciler never
overwrite each other; each outcome it reaches (succeeded, failed, cancelled,
interrupted, needs attention, settled by hand) and each cancel request is an
audit event, written in the transaction of the state change. Records keep a
snapshot of names and URIs, so deleting a host or a user loses nothing.

The record, its timeline, its samples and the dirty-rate readings stay in one
module (over 400 lines) because the samples and their final-statistics
helpers are the record's own progress, read and written together with it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DatabaseError, models, transaction
from django.db.models import Q
from django.dispatch import Signal
from django.urls import reverse
from django.utils import timezone

from .api.models import ApiToken, IdempotentRequest  # noqa: F401  (the app's models live in migrator.models)
from .audit.models import AppendOnlyModel, AuditEvent, NeverDeletedQuerySet
from .fleet.models import Batch, BatchKind, BatchState, QueueLock  # noqa: F401  (the app's models live in migrator.models)

# Sent with `migration=` whenever a record is created or changes state (after
# the commit); migrator.live publishes it to the pages, so no caller has to.
state_changed = Signal()


class MigrationState(models.TextChoices):
    # Beyond a concurrency limit, or scheduled for later: the record waits
    # for a slot (migrator.slots) and no job exists yet.
    WAITING = "waiting", "Waiting"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    CANCELLING = "cancelling", "Cancelling"
    # Post-copy lost its link: the VM runs on the destination while part of
    # its memory is still on the source. Neither side may be stopped.
    INTERRUPTED = "interrupted", "Post-copy interrupted"
    # The worker could not learn where the VM runs (a host did not answer):
    # reconciliation keeps asking until it can tell.
    ATTENTION = "attention", "Needs attention"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATES = (
    MigrationState.WAITING,
    MigrationState.QUEUED,
    MigrationState.RUNNING,
    MigrationState.CANCELLING,
    MigrationState.INTERRUPTED,
    MigrationState.ATTENTION,
)
# States a script waits through: the worker still has the last word.
IN_FLIGHT_STATES = (MigrationState.WAITING, MigrationState.QUEUED, MigrationState.RUNNING, MigrationState.CANCELLING)
# States that hold a slot of the concurrency limits: a job exists or runs.
SLOT_STATES = (MigrationState.QUEUED, MigrationState.RUNNING, MigrationState.CANCELLING)
# States in which a worker holds the migration and renews its lease.
WORKING_STATES = (MigrationState.RUNNING, MigrationState.CANCELLING)
FINAL_STATES = (MigrationState.SUCCEEDED, MigrationState.FAILED, MigrationState.CANCELLED)
# The audit event of each outcome a transition reaches (a settle by hand is
# `migration.settled_by_hand`, a cancel request `migration.cancel_requested`).
OUTCOME_ACTIONS = {
    MigrationState.SUCCEEDED: "migration.succeeded",
    MigrationState.FAILED: "migration.failed",
    MigrationState.CANCELLED: "migration.cancelled",
    MigrationState.INTERRUPTED: "migration.interrupted",
    MigrationState.ATTENTION: "migration.needs_attention",
}
STATE_BADGES = {
    MigrationState.WAITING: "light",
    MigrationState.QUEUED: "secondary",
    MigrationState.RUNNING: "primary",
    MigrationState.CANCELLING: "warning",
    MigrationState.INTERRUPTED: "danger",
    MigrationState.ATTENTION: "warning",
    MigrationState.SUCCEEDED: "success",
    MigrationState.FAILED: "danger",
    MigrationState.CANCELLED: "dark",
}


# Never deleted, and changed only by the transitions' conditional updates.
class MigrationQuerySet(NeverDeletedQuerySet):
    def active(self) -> MigrationQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def finished(self) -> MigrationQuerySet:
        return self.filter(state__in=FINAL_STATES)

    def for_vm(self, uuid: str) -> MigrationQuerySet:
        return self.filter(vm_uuid=uuid)


class Migration(AppendOnlyModel):
    state = models.CharField(max_length=16, choices=MigrationState.choices, default=MigrationState.QUEUED)

    # What and where, as foreign keys plus a snapshot that survives deletions.
    vm = models.ForeignKey("hosts.VirtualMachine", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    vm_uuid = models.CharField(max_length=36)
    vm_name = models.CharField(max_length=255)
    vm_memory_kib = models.BigIntegerField(default=0)
    vm_vcpus = models.PositiveIntegerField(default=0)
    source = models.ForeignKey("hosts.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source_name = models.CharField(max_length=100)
    source_uri = models.CharField(max_length=500)
    destination = models.ForeignKey("hosts.Host", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    destination_name = models.CharField(max_length=100)
    destination_uri = models.CharField(max_length=500)
    storage_class = models.CharField(max_length=16)

    # Who.
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    started_by_username = models.CharField(max_length=150)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancelled_by_username = models.CharField(max_length=150, blank=True)

    # How: parameters as requested, as applied to libvirt, and the checks.
    parameters = models.JSONField(default=dict)
    applied_parameters = models.JSONField(default=dict, blank=True)
    precheck_report = models.JSONField(default=list, blank=True, help_text="The report the operator reviewed.")
    job_precheck_report = models.JSONField(
        default=list, blank=True, help_text="The job's own re-check, just before it migrated."
    )
    prediction = models.JSONField(default=dict, blank=True)

    # When.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True)
    worker_pid = models.IntegerField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    # The worker's lease: renewed every few seconds while it holds the record;
    # a record whose lease ran out has lost its worker, whatever its pid.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    postcopy_started_at = models.DateTimeField(null=True, blank=True)
    # The queue: a scheduled start (none: as soon as a slot frees) and, while
    # waiting, why (the limit it waits for), written by migrator.slots.
    not_before = models.DateTimeField(null=True, blank=True, db_index=True)
    wait_reason = models.CharField(max_length=300, blank=True)
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.PROTECT, related_name="migrations")

    # Outcome.
    last_sample = models.JSONField(default=dict, blank=True)
    final_stats = models.JSONField(default=dict, blank=True)
    total_time_ms = models.BigIntegerField(null=True, blank=True)
    downtime_ms = models.BigIntegerField(null=True, blank=True)
    data_processed_bytes = models.BigIntegerField(null=True, blank=True)
    iterations = models.IntegerField(null=True, blank=True)
    avg_throughput_mib_s = models.FloatField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    error_code = models.IntegerField(null=True, blank=True)
    error_domain = models.IntegerField(null=True, blank=True)
    error_details = models.JSONField(default=dict, blank=True)
    outcome_note = models.TextField(blank=True)
    vm_location = models.CharField(max_length=100, blank=True, help_text="Where the VM runs after the migration.")

    objects = MigrationQuerySet.as_manager()
    # After the insert a row changes only through the conditional updates of its
    # transitions: a whole-row save could undo a racing transition and would let
    # the history be rewritten.
    changed_message = "A migration record changes only through its state transitions."

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # R2: never two migrations of the same VM at once, whatever races.
            models.UniqueConstraint(
                fields=["vm_uuid"],
                condition=Q(state__in=["waiting", "queued", "running", "cancelling", "interrupted", "attention"]),
                name="one_active_migration_per_vm",
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.vm_name}: {self.source_name} → {self.destination_name}"

    def get_absolute_url(self) -> str:
        return reverse("migrator:detail", args=[self.pk])

    @property
    def badge(self) -> str:
        return STATE_BADGES.get(self.state, "secondary")

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT_STATES

    @property
    def can_cancel(self) -> bool:
        """Waiting, queued, or running in pre-copy: once post-copy started the
        destination owns the VM and there is nothing to go back to."""
        if self.state in (MigrationState.WAITING, MigrationState.QUEUED):
            return True
        return self.state == MigrationState.RUNNING and self.postcopy_started_at is None

    @property
    def group_name(self) -> str:
        return f"migration-{self.pk}"

    # ------------------------------------------------------------ transitions

    def _transition(self, allowed: tuple[str, ...], *, audit: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Conditional update: only one of several racing writers wins. The
        winner announces the new state once it is committed.

        With `audit` (AuditEvent.record's arguments, action included), the
        winner that entered the state (not one that stayed in it: a
        needs-attention record asked again) records the event in the same
        transaction: a failed audit write leaves the record as it was."""
        target = fields.get("state")
        try:
            with transaction.atomic():
                entering = tuple(state for state in allowed if state != target)
                won = entered = Migration.objects.filter(pk=self.pk, state__in=entering).update(**fields) == 1
                if not won and target in allowed:
                    won = Migration.objects.filter(pk=self.pk, state=target).update(**fields) == 1
                self.refresh_from_db()
                if entered and audit:
                    self._audit(**audit)
                if won:
                    transaction.on_commit(self.announce)
        except Exception:
            # Rolled back: the record in memory must not show the state it did not reach.
            try:
                self.refresh_from_db()
            except DatabaseError:
                pass
            raise
        return won

    def _audit(self, action: str, *, actor=None, client_address: str | None = None, **details: Any) -> None:
        """An audit event of this record's outcome: where, what, who asked."""
        facts: dict[str, Any] = {
            "vm": self.vm_name,
            "vm_uuid": self.vm_uuid,
            "source": self.source_name,
            "destination": self.destination_name,
            "state": self.state,
            "vm_location": self.vm_location,
            "requested_by": self.started_by_username,
        }
        if self.cancelled_by_username:
            facts["cancelled_by"] = self.cancelled_by_username
        if self.error_message:
            facts["error"] = self.error_message[:500]
        if self.error_code is not None:
            facts["error_code"] = self.error_code
        for name in ("downtime_ms", "total_time_ms"):
            if getattr(self, name) is not None:
                facts[name] = getattr(self, name)
        if self.outcome_note:
            facts["note"] = self.outcome_note[:500]
        AuditEvent.record(action, actor=actor, obj=self, client_address=client_address, details={**facts, **details})

    @staticmethod
    def _outcome(state: str) -> dict[str, Any]:
        """The audit of reaching `state`, with no actor: the worker's doing
        (the details name who asked for the migration)."""
        return {"action": OUTCOME_ACTIONS[state]}

    def announce(self) -> None:
        """Tell every listener (the live pages) the record's current state."""
        state_changed.send(sender=Migration, migration=self)

    def promote(self) -> bool:
        """waiting → queued: a slot is free and its start time has come
        (migrator.fleet.slots decides, under its lock)."""
        won = self._transition((MigrationState.WAITING,), state=MigrationState.QUEUED, wait_reason="")
        if won:
            self.log("queued", "A slot is free: the migration is queued for a worker.")
        return won

    def set_wait_reason(self, reason: str) -> None:
        """Why it still waits; announced to the pages when it changed."""
        reason = reason[:300]
        if (
            Migration.objects.filter(pk=self.pk, state=MigrationState.WAITING)
            .exclude(wait_reason=reason)
            .update(wait_reason=reason)
        ):
            self.wait_reason = reason
            transaction.on_commit(self.announce)

    def claim(self, worker_pid: int | None = None, worker_host: str = "") -> bool:
        """queued → running; False when someone else claimed or cancelled it."""
        now = timezone.now()
        won = self._transition(
            (MigrationState.QUEUED,),
            state=MigrationState.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_pid=worker_pid,
            worker_host=worker_host,
        )
        if won:
            self.log("running", "Worker claimed the migration.")
        return won

    def claim_resume(self, worker_pid: int | None = None, worker_host: str = "") -> bool:
        """interrupted → running, for the job that resumes post-copy."""
        won = self._transition(
            (MigrationState.INTERRUPTED,),
            state=MigrationState.RUNNING,
            heartbeat_at=timezone.now(),
            worker_pid=worker_pid,
            worker_host=worker_host,
        )
        if won:
            self.log("resuming", "Worker claimed the migration to resume post-copy.")
        return won

    def renew_lease(self) -> bool:
        """The worker's heartbeat; False once the record left its hands."""
        return Migration.objects.filter(pk=self.pk, state__in=WORKING_STATES).update(heartbeat_at=timezone.now()) == 1

    def mark_postcopy(self) -> bool:
        """Record the switch to post-copy (once)."""
        won = (
            Migration.objects.filter(pk=self.pk, postcopy_started_at__isnull=True).update(
                postcopy_started_at=timezone.now()
            )
            == 1
        )
        if won:
            self.refresh_from_db()
            self.log("postcopy", "Switched to post-copy: the VM now runs on the destination.")
            transaction.on_commit(self.announce)
        return won

    def progress(self, sample: dict[str, Any]) -> MigrationSample:
        row = MigrationSample.from_stats(self, sample)
        Migration.objects.filter(pk=self.pk).update(last_sample=row.as_dict())
        return row

    def finish(self, stats: dict[str, Any], note: str = "") -> bool:
        fields = final_stat_fields(stats)
        won = self._transition(
            ACTIVE_STATES,
            audit=self._outcome(MigrationState.SUCCEEDED),
            state=MigrationState.SUCCEEDED,
            finished_at=timezone.now(),
            final_stats=stats,
            outcome_note=note,
            vm_location=self.destination_name,
            # An interruption it came through stays in the timeline and the note.
            error_message="",
            error_code=None,
            error_domain=None,
            error_details={},
            **fields,
        )
        if won:
            self.log("succeeded", note or "Migration completed.")
        return won

    def _fail_as(self, allowed: tuple[str, ...], state: str, error: Any, vm_location: str, note: str, **more) -> bool:
        """A transition that records an error: its plain message, libvirt's code and details."""
        details = error.as_dict() if hasattr(error, "as_dict") else {"message": str(error)}
        message = details.get("message", str(error))
        won = self._transition(
            allowed,
            audit=self._outcome(state),
            state=state,
            error_message=message,
            error_code=details.get("code"),
            error_domain=details.get("domain"),
            error_details=details,
            vm_location=vm_location,
            outcome_note=note,
            **more,
        )
        if won:
            self.log(state, f"{message} {note}".strip())
        return won

    def fail(self, error: Any, *, vm_location: str, note: str = "") -> bool:
        return self._fail_as(ACTIVE_STATES, MigrationState.FAILED, error, vm_location, note, finished_at=timezone.now())

    def interrupt(self, error: Any, note: str) -> bool:
        """Post-copy lost its link: nothing may be destroyed or resumed; the
        operator resumes post-copy once the hosts see each other again."""
        split = f"split between {self.source_name} and {self.destination_name}"
        return self._fail_as(ACTIVE_STATES, MigrationState.INTERRUPTED, error, split, note)

    def need_attention(self, error: Any, note: str, vm_location: str = "unknown") -> bool:
        """Where the VM runs cannot be known now (a host does not answer)."""
        allowed = (MigrationState.RUNNING, MigrationState.CANCELLING, MigrationState.ATTENTION)
        return self._fail_as(allowed, MigrationState.ATTENTION, error, vm_location, note)

    def settle_by_hand(
        self, state: str, *, vm_location: str, reason: str, user, via: str = "", client_address: str | None = None
    ) -> bool:
        """A superuser's verdict on a record the dashboard cannot settle,
        audited as `migration.settled_by_hand` with the superuser as actor."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state.")
        username = getattr(user, "username", "") or ""
        won = self._transition(
            ACTIVE_STATES,
            audit={
                "action": "migration.settled_by_hand",
                "actor": user,
                "client_address": client_address,
                "reason": reason,
                **({"via": via} if via else {}),
            },
            state=state,
            finished_at=timezone.now(),
            vm_location=vm_location,
            outcome_note=f"Settled by hand by {username}: {reason}",
        )
        if won:
            self.log("settled", f"Settled by hand by {username} as {state}, VM on {vm_location}: {reason}")
        return won

    def request_cancel(self, user, *, via: str = "", client_address: str | None = None) -> bool:
        """A waiting or queued migration is cancelled at once (audited as
        `migration.cancelled`); a running one is marked `cancelling`
        (`migration.cancel_requested`) and its job aborts libvirt's job.
        Either event names the user as actor."""
        username = getattr(user, "username", "") or ""
        user = user if getattr(user, "pk", None) else None
        asked = {"actor": user, "client_address": client_address, **({"via": via} if via else {})}
        if self._transition(
            (MigrationState.WAITING, MigrationState.QUEUED),
            audit={"action": "migration.cancelled", **asked},
            state=MigrationState.CANCELLED,
            finished_at=timezone.now(),
            cancelled_by=user,
            cancelled_by_username=username,
            vm_location=self.source_name,
            outcome_note="Cancelled before it started; the VM was not touched.",
        ):
            self.log("cancelled", f"Cancelled by {username} before it started.")
            return True
        if self.postcopy_started_at is not None:
            return False
        if self._transition(
            (MigrationState.RUNNING,),
            audit={"action": "migration.cancel_requested", **asked},
            state=MigrationState.CANCELLING,
            cancelled_by=user,
            cancelled_by_username=username,
        ):
            self.log("cancelling", f"Cancel requested by {username}.")
            return True
        return False

    def mark_cancelled(self, *, vm_location: str, note: str = "") -> bool:
        won = self._transition(
            ACTIVE_STATES,
            audit=self._outcome(MigrationState.CANCELLED),
            state=MigrationState.CANCELLED,
            finished_at=timezone.now(),
            vm_location=vm_location,
            outcome_note=note,
        )
        if won:
            self.log("cancelled", note or "Migration aborted.")
        return won

    def log(self, state: str, message: str) -> MigrationEvent:
        return MigrationEvent.objects.create(migration=self, state=state, message=message[:2000])

    # ------------------------------------------------------------ reading

    @property
    def memory_bytes(self) -> int:
        return self.vm_memory_kib * 1024

    def elapsed_s(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    @property
    def copies_disks(self) -> bool:
        return bool(self.parameters.get("disks"))

    @property
    def disk_copy(self) -> tuple[int, int] | None:
        """(bytes copied, bytes to copy) of the disks, None before libvirt
        sized the copy. A success reads its final statistics; a running,
        failed or cancelled migration its last sample."""
        final = self.final_stats or {}
        if final.get("disk_total"):
            return int(final.get("disk_processed") or 0), int(final["disk_total"])
        last = self.last_sample or {}
        if last.get("disk_total_bytes"):
            return int(last.get("disk_processed_bytes") or 0), int(last["disk_total_bytes"])
        return None


def completed_stats(live: dict[str, Any], completed: dict[str, Any]) -> dict[str, Any]:
    """Final statistics of a completed migration: the completed-job
    statistics read on the destination over the source's last reading.

    The destination's copy of those statistics has no disk figures (libvirt
    9.0 reports 0 there; only the source's JOB_COMPLETED event has them), so
    they come from the source's reading. A completed job has copied every
    disk: libvirt switches over only once the disk mirrors are in sync.
    """
    final = {**live, **completed}
    final.pop("type", None)
    disk_total = int(completed.get("disk_total") or live.get("disk_total") or 0)
    if disk_total:
        final["disk_total"] = disk_total
        final["disk_processed"] = int(completed.get("disk_processed") or disk_total)
        final["disk_remaining"] = 0
    return final


def final_sample_stats(final: dict[str, Any]) -> dict[str, Any]:
    """The last chart point of a completed migration, in the shape of a live
    reading: nothing remains, and as in the source's readings the data
    figures count memory and disks together."""
    memory_total = int(final.get("memory_total") or 0)
    disk_total = int(final.get("disk_total") or 0)
    # In a completed job `downtime` is the real one; in readings the expected one.
    readings = {key: value for key, value in final.items() if key != "downtime"}
    return {
        **readings,
        "memory_remaining": 0,
        "disk_processed": disk_total,
        "disk_remaining": 0,
        "data_total": memory_total + disk_total,
        "data_processed": int(final.get("memory_processed") or 0) + disk_total,
        "data_remaining": 0,
    }


def final_stat_fields(stats: dict[str, Any]) -> dict[str, Any]:
    """The summary columns, read from the completed-job statistics libvirt reports."""
    elapsed_ms = stats.get("time_elapsed")
    processed = stats.get("data_processed")
    throughput = None
    if elapsed_ms and processed:
        throughput = processed / (1024 * 1024) / (elapsed_ms / 1000)
    return {
        "total_time_ms": elapsed_ms,
        "downtime_ms": stats.get("downtime"),
        "data_processed_bytes": processed,
        "iterations": stats.get("memory_iteration"),
        "avg_throughput_mib_s": throughput,
    }


class MigrationEvent(models.Model):
    """The state timeline of one migration."""

    migration = models.ForeignKey(Migration, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=32)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "pk"]


class ActionKind(models.TextChoices):
    """What an operator can do to a running migration (the guide's
    migrate-setspeed, migrate-setmaxdowntime, migrate-postcopy, and suspend)."""

    BANDWIDTH = "bandwidth", "Set the bandwidth limit"
    MAX_DOWNTIME = "max_downtime", "Set the max downtime"
    POSTCOPY = "postcopy", "Switch to post-copy"
    FORCE_COMPLETE = "force_complete", "Force complete"


class MigrationAction(models.Model):
    """An action asked of a running migration. The worker that holds the
    migration applies it from its monitor (so any web process on any machine
    can ask) and writes the outcome back."""

    migration = models.ForeignKey(Migration, on_delete=models.CASCADE, related_name="actions")
    kind = models.CharField(max_length=16, choices=ActionKind.choices)
    value = models.BigIntegerField(null=True, blank=True)
    requested_by_username = models.CharField(max_length=150, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    via = models.CharField(max_length=16, default="browser")
    applied_at = models.DateTimeField(null=True, blank=True)
    elapsed_ms = models.BigIntegerField(null=True, blank=True, help_text="Where it lands on the charts.")
    ok = models.BooleanField(null=True)
    result = models.TextField(blank=True)

    class Meta:
        ordering = ["requested_at", "pk"]

    @property
    def label(self) -> str:
        if self.kind == ActionKind.BANDWIDTH:
            return f"bandwidth {self.value} MiB/s" if self.value else "bandwidth unlimited"
        if self.kind == ActionKind.MAX_DOWNTIME:
            return f"max downtime {self.value} ms"
        return self.get_kind_display().lower()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "kind": self.kind,
            "value": self.value,
            "label": self.label,
            "requested_by": self.requested_by_username,
            "via": self.via,
            "elapsed_ms": self.elapsed_ms,
            "ok": self.ok,
            "result": self.result,
        }


class MigrationSample(models.Model):
    """One reading of libvirt's job statistics during a migration."""

    migration = models.ForeignKey(Migration, on_delete=models.CASCADE, related_name="samples")
    sampled_at = models.DateTimeField(default=timezone.now)
    elapsed_ms = models.BigIntegerField(default=0)
    iteration = models.IntegerField(default=0)
    data_total_bytes = models.BigIntegerField(default=0)
    data_processed_bytes = models.BigIntegerField(default=0)
    data_remaining_bytes = models.BigIntegerField(default=0)
    memory_total_bytes = models.BigIntegerField(default=0)
    memory_processed_bytes = models.BigIntegerField(default=0)
    memory_remaining_bytes = models.BigIntegerField(default=0)
    disk_total_bytes = models.BigIntegerField(default=0)
    disk_processed_bytes = models.BigIntegerField(default=0)
    disk_remaining_bytes = models.BigIntegerField(default=0)
    throughput_mib_s = models.FloatField(default=0, help_text="Memory sent per second, as libvirt reports it.")
    disk_throughput_mib_s = models.FloatField(default=0, help_text="Disk data copied per second.")
    dirty_rate_mib_s = models.FloatField(default=0)
    expected_downtime_ms = models.IntegerField(null=True, blank=True)
    throttle_pct = models.IntegerField(null=True, blank=True)
    raw = models.JSONField(default=dict)

    class Meta:
        ordering = ["elapsed_ms", "pk"]

    @classmethod
    def from_stats(cls, migration: Migration, stats: dict[str, Any]) -> MigrationSample:
        """Build and save a sample from a `jobStats()` dict (see gateway.job_sample)."""
        mib = 1024 * 1024
        page_size = stats.get("memory_page_size") or 4096
        elapsed_ms = int(stats.get("time_elapsed") or 0)
        disk_processed = int(stats.get("disk_processed") or 0)
        disk_mib_s = float(stats.get("disk_bps") or 0) / mib
        memory_mib_s = float(stats.get("memory_bps") or 0) / mib
        previous = migration.samples.order_by("-elapsed_ms", "-pk").first()
        since_ms = elapsed_ms - previous.elapsed_ms if previous is not None else 0
        if not disk_mib_s and since_ms > 0:
            # libvirt reports no disk_bps for an NBD disk copy: derive it
            # from the progress since the previous reading.
            copied = max(0, disk_processed - previous.disk_processed_bytes)
            disk_mib_s = copied / mib / (since_ms / 1000)
        sent = stats.get("memory_processed")
        if since_ms >= 1000 and sent is not None and int(sent) == previous.memory_processed_bytes:
            # Through an outage libvirt keeps reporting the last throughput:
            # nothing was sent since the previous reading, a second or more ago.
            memory_mib_s = 0.0
        return cls.objects.create(
            migration=migration,
            elapsed_ms=elapsed_ms,
            iteration=int(stats.get("memory_iteration") or 0),
            data_total_bytes=int(stats.get("data_total") or 0),
            data_processed_bytes=int(stats.get("data_processed") or 0),
            data_remaining_bytes=int(stats.get("data_remaining") or 0),
            memory_total_bytes=int(stats.get("memory_total") or 0),
            memory_processed_bytes=int(stats.get("memory_processed") or 0),
            memory_remaining_bytes=int(stats.get("memory_remaining") or 0),
            disk_total_bytes=int(stats.get("disk_total") or 0),
            disk_processed_bytes=disk_processed,
            disk_remaining_bytes=int(stats.get("disk_remaining") or 0),
            throughput_mib_s=memory_mib_s,
            disk_throughput_mib_s=disk_mib_s,
            dirty_rate_mib_s=float(stats.get("memory_dirty_rate") or 0) * page_size / mib,
            expected_downtime_ms=stats.get("downtime"),
            throttle_pct=stats.get("auto_converge_throttle"),
            raw=stats,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape shared by the first render and the websocket."""
        return {
            "elapsed_ms": self.elapsed_ms,
            "iteration": self.iteration,
            "data_total_bytes": self.data_total_bytes,
            "data_processed_bytes": self.data_processed_bytes,
            "data_remaining_bytes": self.data_remaining_bytes,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_processed_bytes": self.memory_processed_bytes,
            "memory_remaining_bytes": self.memory_remaining_bytes,
            "disk_total_bytes": self.disk_total_bytes,
            "disk_processed_bytes": self.disk_processed_bytes,
            "disk_remaining_bytes": self.disk_remaining_bytes,
            "throughput_mib_s": round(self.throughput_mib_s, 3),
            "disk_throughput_mib_s": round(self.disk_throughput_mib_s, 3),
            "dirty_rate_mib_s": round(self.dirty_rate_mib_s, 3),
            "expected_downtime_ms": self.expected_downtime_ms,
            "throttle_pct": self.throttle_pct,
            "sampled_at": self.sampled_at.isoformat(),
        }


class DirtyRateMeasurement(models.Model):
    """One page-sampling dirty-rate reading of a VM (R8). Readings taken by
    the same request share a `series`."""

    vm_uuid = models.CharField(max_length=36, db_index=True)
    vm_name = models.CharField(max_length=255)
    host = models.ForeignKey("hosts.Host", null=True, on_delete=models.SET_NULL, related_name="+")
    host_name = models.CharField(max_length=100)
    series = models.CharField(max_length=36, db_index=True)
    measured_at = models.DateTimeField(default=timezone.now)
    window_s = models.PositiveIntegerField()
    mode = models.CharField(max_length=32, default="page-sampling")
    dirty_rate_mib_s = models.FloatField()
    requested_by_username = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-measured_at", "-pk"]

    @classmethod
    def latest_series(cls, vm_uuid: str) -> list[DirtyRateMeasurement]:
        """The readings of the VM's newest measurement, oldest first."""
        last = cls.objects.filter(vm_uuid=vm_uuid).first()
        if last is None:
            return []
        return list(cls.objects.filter(series=last.series).order_by("measured_at"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "series": self.series,
            "measured_at": self.measured_at.isoformat(),
            "window_s": self.window_s,
            "mode": self.mode,
            "dirty_rate_mib_s": round(self.dirty_rate_mib_s, 3),
            "host_name": self.host_name,
        }
