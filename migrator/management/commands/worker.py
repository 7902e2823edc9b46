import threading
import time

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections
from rq.worker import Worker
from rq.worker_pool import WorkerPool

from hosts import gateway
from migrator.executor import reconcile
from migrator.jobs import QUEUE, maintenance


class Command(BaseCommand):
    help = (
        "Run RQ workers for migrations (one process per concurrent migration, with RQ's scheduler for "
        "scheduled starts), after settling migrations whose worker died."
    )

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="Exit when the queue is empty.")
        parser.add_argument(
            "--maintenance-every", type=int, default=60, help="Seconds between reconcile + inventory refresh runs."
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.MIGRATION_WORKER_PROCESSES,
            help="Worker processes, each running one migration at a time (default: MIGRATION_WORKER_PROCESSES, "
            "the site limit plus one for maintenance).",
        )

    def handle(self, burst: bool, maintenance_every: int, processes: int, **options):
        settled = reconcile()
        for m in settled:
            self.stdout.write(f"Reconciled migration #{m.pk}: {m.state} ({m.outcome_note})")
        # The work horse forks; it must not inherit an open database socket,
        # nor a libvirt connection whose replies its event loop could read.
        connections.close_all()
        gateway.close_all()
        queue = django_rq.get_queue(QUEUE)
        if not burst and maintenance_every > 0:
            threading.Thread(target=self._schedule, args=(queue, maintenance_every), daemon=True).start()
        if processes <= 1:
            django_rq.get_worker(QUEUE).work(burst=burst, with_scheduler=True)
            return
        pool = WorkerPool([QUEUE], connection=queue.connection, num_workers=processes, worker_class=Worker)
        pool.start(burst=burst)

    @staticmethod
    def _schedule(queue, every: int) -> None:
        while True:
            time.sleep(every)
            # A fixed id: a maintenance run still waiting is not queued twice.
            queue.enqueue(maintenance, job_id="maintenance", job_timeout=900, description="maintenance")
