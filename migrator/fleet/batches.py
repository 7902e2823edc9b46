"""Batches: a host's evacuation and a bulk move of several VMs.

A batch queues one migration per step of the plan the operator reviewed
(migrator.planning.evacuation), in the plan's order, through the same queue
and limits as any migration; an evacuation first puts its host in
maintenance, so no new migration goes to it. Cancelling drops the waiting
migrations and, by choice, cancels the running ones; a batch ends when every
migration in it has ended, with a report of predicted against actual.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from hosts.models import Host, VirtualMachine

from ..actions import ActionRefused, Requester, request_cancel
from ..audit.models import AuditEvent
from ..jobs import dispatch, queue_migration
from ..models import FINAL_STATES, Migration, MigrationState, state_changed
from .models import BATCH_ACTIVE_STATES, Batch, BatchKind, BatchState


class BatchRefused(Exception):
    """The batch cannot start or change; the message says why in plain words."""


def _audit(who: Requester, action: str, obj, **details: Any) -> None:
    AuditEvent.record(
        action, actor=who.user, obj=obj, details={**details, "via": who.via}, client_address=who.client_address
    )


START_AT_MAX_DAYS = 30


def parse_start_at(raw: str) -> datetime | None:
    """A batch's optional scheduled start (ISO 8601; a time without a zone is
    the server's): in the future, within 30 days. ValueError says what is wrong."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError("Write the start time as YYYY-MM-DD HH:MM, or leave it empty to start now.") from None
    if timezone.is_naive(at):
        at = timezone.make_aware(at)
    now = timezone.now()
    if at <= now:
        raise ValueError("The start time is in the past: choose a later time, or leave it empty to start now.")
    if (at - now).days >= START_AT_MAX_DAYS:
        raise ValueError(f"The start time is more than {START_AT_MAX_DAYS} days away: choose a time within 30 days.")
    return at


def enter_maintenance(host: Host, who: Requester) -> bool:
    """No new migration goes to `host` from now on; False when it already was."""
    changed = Host.objects.filter(pk=host.pk, in_maintenance=False).update(
        in_maintenance=True, maintenance_since=timezone.now()
    )
    host.refresh_from_db()
    if changed:
        _audit(who, "host.maintenance_entered", host, host=host.name)
    return bool(changed)


def leave_maintenance(host: Host, who: Requester) -> bool:
    """The host takes migrations again; waiting ones towards it may start."""
    changed = Host.objects.filter(pk=host.pk, in_maintenance=True).update(in_maintenance=False, maintenance_since=None)
    host.refresh_from_db()
    if changed:
        _audit(who, "host.maintenance_left", host, host=host.name)
        transaction.on_commit(dispatch)
    return bool(changed)


def start(
    source: Host,
    plan,
    who: Requester,
    *,
    kind: str = BatchKind.EVACUATION,
    not_before: datetime | None = None,
) -> Batch:
    """Queue the plan's steps as one batch. The plan is re-read against the
    inventory: a VM that left the source or stopped since the review is
    reported, never migrated from a stale plan. Each step runs with the
    parameters the plan chose for it, under the plan's policy."""
    steps = list(plan.steps)
    policy = plan.policy or ""
    if not steps:
        raise BatchRefused(f"Nothing to migrate off {source.name}: the plan has no VM that can move.")
    if (
        kind == BatchKind.EVACUATION
        and source.in_maintenance
        and Batch.objects.filter(source=source, kind=BatchKind.EVACUATION, state__in=BATCH_ACTIVE_STATES).exists()
    ):
        raise BatchRefused(f"{source.name} is already being evacuated: open its batch, or cancel it first.")
    with transaction.atomic():
        batch = Batch.objects.create(
            kind=kind,
            source=source,
            source_name=source.name,
            policy=policy,
            plan=plan.as_dict(),
            created_by=who.user if getattr(who.user, "pk", None) else None,
            created_by_username=who.username,
            not_before=not_before,
        )
        if kind == BatchKind.EVACUATION:
            enter_maintenance(source, who)
        skipped = []
        for step in steps:
            vm = VirtualMachine.objects.filter(pk=step.vm_id, host=source).first()
            destination = Host.objects.filter(pk=step.destination_id).first()
            if vm is None or not vm.running or destination is None:
                skipped.append(f"{step.vm_name}: no longer running on {source.name}")
                continue
            queue_migration(
                vm=vm,
                destination=destination,
                parameters=step.parameters,
                report=step.report,
                user=who.user,
                client_address=who.client_address,
                prediction=step.prediction,
                not_before=not_before,
                batch=batch,
            )
        if skipped:
            Batch.objects.filter(pk=batch.pk).update(note="Not started: " + "; ".join(skipped))
        _audit(
            who,
            "batch.started",
            batch,
            kind=kind,
            source=source.name,
            policy=policy,
            vms=[s.vm_name for s in steps],
            **({"not_before": not_before.isoformat()} if not_before else {}),
        )
    batch.refresh_from_db()
    settle(batch)
    return batch


def cancel(batch: Batch, who: Requester, *, cancel_running: bool = False) -> str:
    """Drop the batch's waiting migrations; cancel its running ones too when
    asked (those already in post-copy finish by themselves)."""
    if not Batch.objects.filter(pk=batch.pk, state=BatchState.RUNNING).update(
        state=BatchState.CANCELLING, cancelled_by_username=who.username
    ):
        raise BatchRefused(f"{batch} is already {batch.get_state_display().lower()}.")
    dropped = kept = 0
    for m in batch.migrations.filter(state__in=(MigrationState.WAITING, MigrationState.QUEUED, MigrationState.RUNNING)):
        if m.state == MigrationState.RUNNING and not cancel_running:
            kept += 1
            continue
        try:
            request_cancel(m, who)
            dropped += 1
        except ActionRefused:
            kept += 1
    _audit(who, "batch.cancelled", batch, dropped=dropped, left_running=kept, cancel_running=cancel_running)
    batch.refresh_from_db()
    settle(batch)
    return (
        f"Dropped {dropped} migration(s); {kept} still running finish by themselves."
        if kept
        else f"Dropped {dropped} migration(s)."
    )


def settle(batch: Batch) -> bool:
    """End the batch once every migration in it has ended."""
    if batch.migrations.exclude(state__in=FINAL_STATES).exists():
        return False
    final = BatchState.CANCELLED if batch.state == BatchState.CANCELLING else BatchState.FINISHED
    won = Batch.objects.filter(pk=batch.pk, state__in=BATCH_ACTIVE_STATES).update(
        state=final, finished_at=timezone.now()
    )
    batch.refresh_from_db()
    if won:
        AuditEvent.record(f"batch.{final}", obj=batch, details=report(batch).summary())
    return bool(won)


def settle_open_batches() -> None:
    for batch in Batch.objects.filter(state__in=BATCH_ACTIVE_STATES):
        settle(batch)


def _settle_when_a_migration_ends(sender, migration: Migration, **kwargs) -> None:
    if migration.batch_id and migration.state in FINAL_STATES:
        batch = Batch.objects.filter(pk=migration.batch_id, state__in=BATCH_ACTIVE_STATES).first()
        if batch is not None:
            settle(batch)


state_changed.connect(_settle_when_a_migration_ends, dispatch_uid="migrator.fleet.batches.settle")


@dataclass(frozen=True)
class ReportRow:
    vm_name: str
    destination: str
    state: str
    state_display: str
    badge: str
    predicted_s: float | None
    actual_s: float | None
    predicted_downtime_ms: float | None
    actual_downtime_ms: int | None
    vm_location: str
    migration: Migration | None
    note: str


@dataclass(frozen=True)
class Report:
    batch: Batch
    rows: list[ReportRow]
    unmovable: list[dict[str, Any]]
    predicted_total_s: float | None
    actual_total_s: float | None

    @property
    def done(self) -> int:
        return sum(1 for r in self.rows if r.state in FINAL_STATES)

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.rows if r.state == MigrationState.SUCCEEDED)

    @property
    def left_on_source(self) -> list[str]:
        """Running VMs that did not move: they stay, running, on the source
        (shut-off VMs, which an evacuation leaves alone, are not counted)."""
        names = [r.vm_name for r in self.rows if r.state in FINAL_STATES and r.state != MigrationState.SUCCEEDED]
        return names + [u.get("vm_name", "") for u in self.unmovable if not u.get("skipped")]

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.batch.source_name,
            "migrations": len(self.rows),
            "succeeded": self.succeeded,
            "left_on_source": self.left_on_source,
            "predicted_total_s": self.predicted_total_s,
            "actual_total_s": self.actual_total_s,
        }


def report(batch: Batch) -> Report:
    """Each step's predicted time and downtime beside the actual, and the
    batch's predicted total beside the time it took."""
    plan = batch.plan or {}
    by_uuid = {m.vm_uuid: m for m in batch.migrations.all()}
    rows = []
    for step in plan.get("steps", []):
        m = by_uuid.get(step.get("vm_uuid"))
        rows.append(
            ReportRow(
                vm_name=step.get("vm_name", ""),
                destination=step.get("destination_name", ""),
                state=m.state if m else "",
                state_display=m.get_state_display() if m else "not started",
                badge=m.badge if m else "secondary",
                predicted_s=step.get("predicted_s"),
                actual_s=m.total_time_ms / 1000 if m and m.total_time_ms is not None else None,
                predicted_downtime_ms=step.get("predicted_downtime_ms"),
                actual_downtime_ms=m.downtime_ms if m else None,
                vm_location=m.vm_location if m else batch.source_name,
                migration=m,
                note=(m.error_message or m.outcome_note) if m else "",
            )
        )
    ends = [m.finished_at for m in by_uuid.values() if m.finished_at]
    actual = (max(ends) - batch.created_at).total_seconds() if ends and batch.finished_at else None
    return Report(batch, rows, plan.get("unmovable", []), plan.get("predicted_total_s"), actual)
