"""How work reaches the RQ workers: queueing a migration (the row waits for
a slot; once migrator.fleet.slots frees one it is queued and gets its job),
and the jobs themselves, short functions that take primary keys."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import django_rq
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job

from hosts import inventory
from hosts.models import Host, VirtualMachine

from .audit import anchor as audit_anchor
from .executor import Executor, reconcile
from .fleet import slots
from .models import SLOT_STATES, Batch, Migration, MigrationState, state_changed
from .parameters import MigrationParameters

QUEUE = "default"
log = logging.getLogger(__name__)


def queue_migration(
    *,
    vm: VirtualMachine,
    destination: Host,
    parameters: MigrationParameters | dict[str, Any],
    report,
    user,
    client_address=None,
    prediction: dict | None = None,
    not_before=None,
    batch: Batch | None = None,
) -> Migration:
    """Create the row, waiting; once the transaction commits it starts as
    soon as its slots are free (at once, when they are) and not before
    `not_before`. The database constraint turns a double submit into an
    IntegrityError."""
    with transaction.atomic():
        migration = Migration.objects.create(
            state=MigrationState.WAITING,
            vm=vm,
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            vm_memory_kib=vm.memory_kib,
            vm_vcpus=vm.vcpus,
            source=vm.host,
            source_name=vm.host.name,
            source_uri=vm.host.uri,
            destination=destination,
            destination_name=destination.name,
            destination_uri=destination.uri,
            storage_class=vm.storage_class,
            started_by=user if getattr(user, "pk", None) else None,
            started_by_username=getattr(user, "username", "") or "",
            client_address=client_address,
            parameters=MigrationParameters.from_record(parameters).as_record(),
            precheck_report=report.as_list() if hasattr(report, "as_list") else list(report or []),
            prediction=prediction or {},
            not_before=not_before,
            batch=batch,
        )
        who = migration.started_by_username or "system"
        if not_before and not_before > timezone.now():
            migration.log("waiting", f"Scheduled by {who} for {timezone.localtime(not_before):%Y-%m-%d %H:%M %Z}.")
            transaction.on_commit(lambda: schedule_dispatch(not_before))
        else:
            migration.log("waiting", f"Asked for by {who}; it starts when its slots are free.")
        transaction.on_commit(migration.announce)
        transaction.on_commit(dispatch)
    migration.refresh_from_db()
    return migration


def dispatch() -> list[Migration]:
    """Queue every waiting migration whose slots are free, and give each its
    job. A job that cannot be queued (Redis away) is queued again by the
    maintenance pass (requeue_lost_jobs)."""
    promoted = slots.promote_waiting()
    for m in promoted:
        try:
            enqueue_migration(m.pk)
        except RedisError:
            log.warning("Redis does not answer: migration #%s is queued again by the next maintenance pass", m.pk)
    return promoted


def schedule_dispatch(at) -> None:
    """A dispatch at `at`, by RQ's scheduler (the workers run it); the
    maintenance pass dispatches too, so a lost schedule delays a start by
    one pass at most."""
    # RQ keeps scheduled times in whole seconds, rounded down: a second
    # later, so the dispatch never runs before the migration's time.
    at = at.replace(microsecond=0) + timedelta(seconds=1)
    try:
        django_rq.get_queue(QUEUE).enqueue_at(at, dispatch, description="start scheduled migrations")
    except RedisError:
        log.warning("Redis does not answer: the scheduled start is left to the maintenance pass")


def _dispatch_when_a_slot_frees(sender, migration: Migration, **kwargs) -> None:
    """A migration that leaves the workers' hands frees its slots (a
    waiting one that is cancelled frees those it kept)."""
    if migration.state not in SLOT_STATES and migration.state != MigrationState.WAITING:
        dispatch()


state_changed.connect(_dispatch_when_a_slot_frees, dispatch_uid="migrator.jobs.dispatch")


def run_migration(migration_id: int) -> str:
    migration = Migration.objects.get(pk=migration_id)
    return Executor(migration).run().state


def resume_postcopy(migration_id: int) -> str:
    migration = Migration.objects.get(pk=migration_id)
    return Executor(migration).resume().state


def enqueue_migration(migration_id: int) -> None:
    job = django_rq.get_queue(QUEUE).enqueue(
        run_migration, migration_id, job_timeout=-1, description=f"migration #{migration_id}"
    )
    Migration.objects.filter(pk=migration_id).update(rq_job_id=job.id)


def refresh_host_inventory(host_id: int) -> None:
    host = Host.objects.filter(pk=host_id).first()
    if host is not None:
        inventory.refresh_host(host)


def maintenance() -> None:
    """Periodic: settle migrations whose worker died, queue again those whose
    job vanished, start waiting ones whose slots or time came, re-read every host, and anchor the audit log when its
    newest anchor is AUDIT_ANCHOR_INTERVAL_S old."""
    try:
        reconcile()
        try:
            requeue_lost_jobs()
            dispatch()
        except RedisError:
            log.warning("Redis does not answer: lost jobs are queued again next round")
        inventory.refresh_all()
    finally:
        anchor_audit_log()


def anchor_audit_log() -> None:
    """A signed anchor of the audit log's head, when one is due; a failure
    (the directory unwritable, the database away) is a warning, never the
    end of the maintenance pass."""
    try:
        audit_anchor.write_if_due()
    except Exception as error:  # anchoring must never break maintenance
        log.warning("Could not anchor the audit log in %s: %s", settings.AUDIT_ANCHOR_DIR, error)


def requeue_lost_jobs() -> list[Migration]:
    """Queued records whose RQ job is gone (Redis lost it, or it failed
    before claiming the record): queue them again, a few times, then fail
    them; the VM was never touched."""
    cutoff = timezone.now() - timedelta(seconds=settings.MIGRATION_LEASE_S)
    requeued = []
    redis = django_rq.get_connection(QUEUE)
    for m in Migration.objects.filter(state=MigrationState.QUEUED, created_at__lt=cutoff):
        try:
            status = Job.fetch(m.rq_job_id, connection=redis).get_status() if m.rq_job_id else None
        except NoSuchJobError:
            status = None
        if status in ("queued", "started", "deferred", "scheduled"):
            continue
        tries = m.events.filter(state="requeued").count()
        if tries >= settings.MIGRATION_REQUEUE_LIMIT:
            m.fail(
                f"The migration's job was lost {tries} times before it could start.",
                vm_location=m.source_name,
                note="Nothing was changed; the VM keeps running on the source. Check the workers and Redis.",
            )
            continue
        m.log("requeued", f"The job was {'lost' if status is None else status}; queued again.")
        enqueue_migration(m.pk)
        requeued.append(m)
    return requeued
