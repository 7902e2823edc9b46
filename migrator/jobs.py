"""RQ jobs: short functions that take primary keys."""

from __future__ import annotations

import django_rq

from hosts import inventory
from hosts.models import Host

from .executor import Executor, reconcile
from .models import Migration

QUEUE = "default"


def run_migration(migration_id: int) -> str:
    migration = Migration.objects.get(pk=migration_id)
    return Executor(migration).run().state


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
