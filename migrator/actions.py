"""What an operator can ask of a migration once it exists, from the live page
and from `manage.py control_migration` alike: cancel, change the bandwidth or
the max downtime, switch to post-copy, force complete, resume an interrupted
post-copy, and (superusers) settle a record by hand. Each request is checked
here, audited, and handed to the worker through the database, so it holds
whichever web process or machine it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import django_rq
from django.conf import settings
from django.utils import timezone

from .audit.models import AuditEvent
from .models import FINAL_STATES, WORKING_STATES, ActionKind, Migration, MigrationAction, MigrationState
from .parameters import MigrationParameters

BANDWIDTH_RANGE = (1, 100_000)  # MiB/s
DOWNTIME_RANGE = (1, 2_000_000)  # ms: QEMU's own limit is 2,000 s


class ActionRefused(Exception):
    """The request cannot be carried out; the message says why in plain words."""


@dataclass(frozen=True)
class Requester:
    user: object
    via: str = "browser"  # "browser", "command line", "API"
    client_address: str | None = None

    @property
    def username(self) -> str:
        return getattr(self.user, "username", "") or "system"


def _audit(who: Requester, action: str, migration: Migration, **details) -> None:
    AuditEvent.record(
        action,
        actor=who.user,
        obj=migration,
        details={**details, "via": who.via},
        client_address=who.client_address,
    )


def allows_postcopy(migration: Migration) -> bool:
    return MigrationParameters.from_record(migration.parameters).allows_postcopy


def available_actions(migration: Migration) -> list[str]:
    """The live actions that make sense now (the page shows these)."""
    if migration.state != MigrationState.RUNNING:
        return []
    if migration.postcopy_started_at is not None:
        return [ActionKind.BANDWIDTH]
    kinds = [ActionKind.BANDWIDTH, ActionKind.MAX_DOWNTIME]
    if allows_postcopy(migration):
        kinds.append(ActionKind.POSTCOPY)
    kinds.append(ActionKind.FORCE_COMPLETE)
    return kinds


def request_action(migration: Migration, kind: str, value: int | None, who: Requester) -> MigrationAction:
    migration.refresh_from_db()
    if kind not in ActionKind.values:
        raise ActionRefused(f"Unknown action {kind!r}; choose one of {', '.join(ActionKind.values)}.")
    if migration.state != MigrationState.RUNNING:
        raise ActionRefused(
            f"Migration #{migration.pk} is {migration.get_state_display().lower()}: actions apply only while it runs."
        )
    if kind not in available_actions(migration):
        if kind == ActionKind.POSTCOPY and not allows_postcopy(migration):
            raise ActionRefused(
                "This migration was started without post-copy allowed, so it cannot switch to post-copy. "
                "Force complete instead, or start the next migration with post-copy allowed."
            )
        raise ActionRefused(f"“{ActionKind(kind).label}” no longer applies: the migration is already in post-copy.")
    if kind == ActionKind.BANDWIDTH:
        value = _in_range(value, BANDWIDTH_RANGE, "The bandwidth limit", "MiB/s")
    elif kind == ActionKind.MAX_DOWNTIME:
        value = _in_range(value, DOWNTIME_RANGE, "The max downtime", "ms")
    else:
        value = None
    action = MigrationAction.objects.create(
        migration=migration, kind=kind, value=value, requested_by_username=who.username, via=who.via
    )
    migration.log("action asked", f"{action.label} asked by {who.username} ({who.via}).")
    _audit(who, "migration.action_requested", migration, kind=kind, value=value)
    return action


def _in_range(value: int | None, bounds: tuple[int, int], what: str, unit: str) -> int:
    low, high = bounds
    if value is None or not low <= int(value) <= high:
        raise ActionRefused(f"{what} must be a whole number from {low} to {high:,} {unit}.")
    return int(value)


def request_cancel(migration: Migration, who: Requester) -> str:
    """Cancel: at once when queued; a running one is aborted by its worker."""
    migration.refresh_from_db()
    if migration.postcopy_started_at is not None and migration.state == MigrationState.RUNNING:
        raise ActionRefused(
            "The migration is in post-copy: the VM already runs on the destination, so it cannot be cancelled. "
            "It completes by itself."
        )
    # The transition audits the request (`migration.cancel_requested`, or
    # `migration.cancelled` for a queued one) in its own transaction.
    if not migration.request_cancel(who.user, via=who.via, client_address=who.client_address):
        raise ActionRefused(f"Migration #{migration.pk} is already {migration.get_state_display().lower()}.")
    return (
        "Cancelled."
        if migration.state == MigrationState.CANCELLED
        else "Cancel requested: the migration is being aborted."
    )


# The job by its path: migrator.jobs imports the executor, which imports the
# live pages, which import this module.
RESUME_JOB = "migrator.jobs.resume_postcopy"


def request_resume(migration: Migration, who: Requester) -> None:
    migration.refresh_from_db()
    if migration.state != MigrationState.INTERRUPTED:
        raise ActionRefused(
            f"Only an interrupted post-copy can be resumed; migration #{migration.pk} is "
            f"{migration.get_state_display().lower()}."
        )
    migration.log("resume asked", f"Resume post-copy asked by {who.username} ({who.via}).")
    _audit(who, "migration.postcopy_resume_requested", migration)
    django_rq.get_queue("default").enqueue(
        RESUME_JOB, migration.pk, job_timeout=-1, description=f"resume post-copy of migration #{migration.pk}"
    )


SETTLE_STATES = {
    MigrationState.SUCCEEDED: "succeeded",
    MigrationState.FAILED: "failed",
    MigrationState.CANCELLED: "cancelled",
}


def worker_holds(migration: Migration) -> bool:
    """A worker holds the record: it is running or cancelling and its lease is fresh."""
    lease = migration.heartbeat_at
    fresh = lease is not None and (timezone.now() - lease).total_seconds() < settings.MIGRATION_LEASE_S
    return migration.state in WORKING_STATES and fresh


def can_settle(migration: Migration) -> bool:
    """Whether a superuser may settle it by hand now: not settled, no worker holding it."""
    return migration.state not in FINAL_STATES and not worker_holds(migration)


def settle_by_hand(migration: Migration, state: str, vm_location: str, reason: str, who: Requester) -> None:
    migration.refresh_from_db()
    if not getattr(who.user, "is_superuser", False):
        raise ActionRefused("Only a superuser can settle a migration by hand.")
    if migration.state in FINAL_STATES:
        raise ActionRefused(f"Migration #{migration.pk} is already settled ({migration.get_state_display().lower()}).")
    if state not in SETTLE_STATES:
        raise ActionRefused("Settle it as succeeded, failed or cancelled.")
    lease = migration.heartbeat_at
    if worker_holds(migration):
        raise ActionRefused(
            f"A worker still holds migration #{migration.pk} (its lease was renewed at {lease:%H:%M:%S}); "
            "cancel it instead, or wait for the lease to run out."
            if lease
            else f"A worker still holds migration #{migration.pk}; cancel it instead."
        )
    reason = (reason or "").strip()
    if len(reason) < 5:
        raise ActionRefused("Give a reason (what you checked and where the VM really runs).")
    vm_location = (vm_location or "").strip()
    if not vm_location:
        raise ActionRefused("Say where the VM runs now (a host name, or “nowhere”).")
    # Audited by the transition (`migration.settled_by_hand`), in its transaction.
    settled = migration.settle_by_hand(
        state, vm_location=vm_location, reason=reason, user=who.user, via=who.via, client_address=who.client_address
    )
    if not settled:
        raise ActionRefused(f"Migration #{migration.pk} changed meanwhile; reload and look again.")
