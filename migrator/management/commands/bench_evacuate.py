"""How long does an evacuation take, against its plan and against the same
migrations one by one? Six lab guests of mixed dirty rates on lab-a are
evacuated to lab-b and lab-c by real workers under the limits (2 out of a
host, 2 into a host, 5 in all, unless the environment says otherwise); then
the guests are put back and the same migrations run one after another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from hosts import inventory
from hosts.lab import DEMO_GUESTS
from hosts.models import Host
from migrator.actions import Requester
from migrator.fleet import batches
from migrator.jobs import queue_migration
from migrator.models import Batch, BatchState, Migration
from migrator.planning.evacuation import plan_evacuation

from ._lab import bench_user, lab_with_hosts

# MiB rewritten per second by each guest: idle to hot.
DIRTY_MB = (0, 1, 2, 4, 8, 12)
MEMORY_MIB = 128
TIMEOUT_S = 900


class Command(BaseCommand):
    help = (
        "Benchmark an evacuation on the lab: six guests of mixed dirty rates leave lab-a for lab-b and lab-c "
        "under the limits; prints predicted and actual times per VM and in all, and the same migrations run "
        "one by one. Stops the demo guests running on lab-a. Last line: vms=N predicted_s=X actual_s=Y sequential_s=Z"
    )

    def handle(self, **options):
        self.verbosity = options["verbosity"]
        lab, a, _b = lab_with_hosts()
        names = [f"bench-evac-{i + 1}" for i in range(len(DIRTY_MB))]
        for spec in DEMO_GUESTS:
            if lab.where(spec.name) == "A":
                lab.park_guest(spec.name)
        for name, dirty in zip(names, DIRTY_MB, strict=True):
            lab.define_guest(name, MEMORY_MIB, dirty_mb=dirty)
        worker = None
        try:
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                list(pool.map(lab.reset_guest, names))
            worker = self._start_worker(len(names))
            user = bench_user()
            inventory.refresh_host(a)
            plan = plan_evacuation(a, policy="minimal-downtime", vms=list(a.vms.filter(name__in=names)))
            if len(plan.steps) != len(names):
                raise CommandError(f"The plan cannot move every guest: {[u.reasons for u in plan.unmovable]}")
            batch = batches.start(a, plan, Requester(user, "command line"))
            self._wait(lambda: Batch.objects.get(pk=batch.pk).state != BatchState.RUNNING, "the evacuation")
            batches.leave_maintenance(a, Requester(user, "command line"))
            batch.refresh_from_db()
            report = batches.report(batch)
            self.stdout.write(f"{'vm':<14} {'dirty':>5} {'to':<6} {'pred s':>7} {'act s':>7} {'state':<10}")
            for row in report.rows:
                dirty = DIRTY_MB[names.index(row.vm_name)]
                actual = f"{row.actual_s:7.1f}" if row.actual_s is not None else "      —"
                self.stdout.write(
                    f"{row.vm_name:<14} {dirty:>5} {row.destination:<6} {row.predicted_s:7.1f} {actual} {row.state:<10}"
                )
            if report.succeeded != len(names):
                raise CommandError(f"{len(names) - report.succeeded} migration(s) of the evacuation did not succeed.")

            # The same migrations, one by one, from the same starting point.
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                list(pool.map(lab.reset_guest, names))
            inventory.refresh_host(a)
            sequential = 0.0
            for step in plan.steps:
                destination = Host.objects.get(pk=step.destination_id)
                vm = a.vms.get(name=step.vm_name)
                started = time.monotonic()
                m = queue_migration(
                    vm=vm, destination=destination, parameters=step.parameters, report=step.report, user=user
                )
                self._wait(lambda m=m: not Migration.objects.get(pk=m.pk).in_flight, step.vm_name)
                sequential += time.monotonic() - started
                m.refresh_from_db()
                if m.state != "succeeded":
                    raise CommandError(f"{step.vm_name} one by one: {m.state}: {m.error_message}")
        finally:
            if worker is not None:
                self._stop_worker(worker)
            for name in names:
                lab.remove_guest(name)
        actual = report.actual_total_s or 0.0
        self.stdout.write(
            f"predicted total {plan.predicted_total_s:.1f} s, actual {actual:.1f} s, one by one {sequential:.1f} s "
            f"(batch / one by one = {actual / sequential:.2f})"
        )
        self.stdout.write(
            f"vms={len(names)} predicted_s={plan.predicted_total_s:.1f} actual_s={actual:.1f} "
            f"sequential_s={sequential:.1f}"
        )

    def _stop_worker(self, worker: subprocess.Popen) -> None:
        """A warm shutdown; a worker that has not stopped after a minute is killed."""
        started = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            self.stderr.write("The worker did not stop within 60 s of SIGTERM; it was killed.")
        if self.verbosity > 1:
            self.stdout.write(f"worker stopped in {time.monotonic() - started:.1f} s")

    def _start_worker(self, processes: int) -> subprocess.Popen:
        log_dir = Path(settings.BASE_DIR) / "var"
        log_dir.mkdir(exist_ok=True)
        log = open(log_dir / "bench-evacuate-worker.log", "w")  # noqa: SIM115 - the worker's lifetime
        return subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--processes", str(processes), "--maintenance-every", "0"],
            cwd=settings.BASE_DIR,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise CommandError(f"{what} did not end within {TIMEOUT_S} s; see var/bench-evacuate-worker.log")
            time.sleep(0.5)
