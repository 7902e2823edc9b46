"""How work reaches the RQ workers: queueing a migration (the row, then its
job once the row is committed) and the jobs themselves, short functions that
take primary keys."""

from __future__ import annotations

from typing import Any

import django_rq
from django.db import transaction

from hosts import inventory
from hosts.models import Host, VirtualMachine

from .executor import Executor, reconcile
from .models import Migration
from .parameters import MigrationParameters

QUEUE = "default"


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
    """Periodic: settle migrations whose worker died, then re-read every host."""
    reconcile()
    inventory.refresh_all()
