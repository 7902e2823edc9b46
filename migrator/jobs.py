"""How work reaches the RQ workers: queueing a migration (the row, then its
job once the row is committed) and the jobs themselves, short functions that
take primary keys."""

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
from .models import Migration, MigrationState
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
) -> Migration:
    """Create the row and enqueue its job when the transaction commits. The
    database constraint turns a double submit into an IntegrityError."""
    with transaction.atomic():
        migration = Migration.objects.create(
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
        )
        migration.log("queued", f"Queued by {migration.started_by_username or 'system'}.")
        transaction.on_commit(migration.announce)
        transaction.on_commit(lambda: enqueue_migration(migration.pk))
    return migration


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
    job vanished, re-read every host, and anchor the audit log when its
    newest anchor is AUDIT_ANCHOR_INTERVAL_S old."""
    try:
        reconcile()
        try:
            requeue_lost_jobs()
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
