import threading
import time

import django_rq
from django.core.management.base import BaseCommand
from django.db import connections

from hosts import gateway
from migrator.executor import reconcile
from migrator.jobs import QUEUE, maintenance


class Command(BaseCommand):
    help = "Run an RQ worker for migrations, after settling migrations whose worker died."

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="Exit when the queue is empty.")
        parser.add_argument(
            "--maintenance-every", type=int, default=60, help="Seconds between reconcile + inventory refresh runs."
        )

    def handle(self, burst: bool, maintenance_every: int, **options):
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
        worker = django_rq.get_worker(QUEUE)
        worker.work(burst=burst, with_scheduler=False)

    @staticmethod
    def _schedule(queue, every: int) -> None:
        while True:
            time.sleep(every)
            # A fixed id: a maintenance run still waiting is not queued twice.
            queue.enqueue(maintenance, job_id="maintenance", job_timeout=900, description="maintenance")
