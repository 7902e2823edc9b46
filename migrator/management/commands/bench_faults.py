"""Inject every fault of the fault suite into a real lab migration and print
one row per fault; the last line counts what went wrong."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from migrator import faultsuite
from migrator.executor import reconcile

from ._lab import bench_user, lab_with_hosts


class Command(BaseCommand):
    help = (
        "Run the fault suite on the lab: a migration per fault (link cuts, daemons killed, hung or restarted, "
        "the worker killed, Redis and PostgreSQL restarted, a full disk, cancels), each checked for a VM that "
        "runs exactly once, a guest that kept running with its memory intact, and a true record. "
        "Restarts the local Redis and PostgreSQL. Last line: faults=N vm_lost=N wrong_records=N stuck_records=N."
    )

    def add_arguments(self, parser):
        parser.add_argument("--only", nargs="*", help="run only these faults (names as printed, spaces or dashes)")

    def handle(self, only: list[str] | None, **options):
        lab, a, b = lab_with_hosts()
        user = bench_user()
        # Records an earlier, interrupted run left behind would refuse the first migrations.
        reconcile(wait_s=30)
        rows = []
        for case in faultsuite.cases(only):
            rows.append(faultsuite.run_case(lab, {"A": a, "B": b}, user, case, log=self.stdout.write))
        self.stdout.write("")
        self.stdout.write(f"{'fault':28} {'record':12} {'VM on':6} {'time':>6}  verdict  reason")
        for row in rows:
            verdict = "ok" if row.ok else "WRONG"
            reason = (row.reason or "").replace("\n", " ")[:110]
            self.stdout.write(
                f"{row.name:28} {row.state:12} {row.on or '-':6} {row.seconds:5.0f}s  {verdict:7}  {reason}"
            )
            for problem in row.problems:
                self.stdout.write(f"{'':28} ! {problem}")
        self.stdout.write(
            f"faults={len(rows)} vm_lost={sum(r.vm_lost for r in rows)} "
            f"wrong_records={sum(r.wrong_record for r in rows)} stuck_records={sum(r.stuck for r in rows)}"
        )
