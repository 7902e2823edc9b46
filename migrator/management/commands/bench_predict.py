"""How right are the predictions? Runs a matrix of real lab migrations
(dirty rates × bandwidth caps, repeated): measures the dirty rate first,
predicts, migrates, and compares predicted with actual."""

from __future__ import annotations

import statistics
import time
import uuid

from django.core.management.base import BaseCommand

from hosts import inventory
from migrator.planning.dirtyrate import curve_windows, latest_series, measure_series
from migrator.planning.prediction import predict_for

from ._lab import bench_user, lab_with_hosts, queue_on_lab, run_here

BAD_ERROR_PCT = 25.0


class Command(BaseCommand):
    help = "Benchmark the convergence planner against real lab migrations."

    def add_arguments(self, parser):
        parser.add_argument("--dirty", default="0,4,12,24,40", help="MiB rewritten per second by the guests")
        parser.add_argument("--bandwidth", default="16,32", help="bandwidth caps, MiB/s")
        parser.add_argument("--repeat", type=int, default=2)
        parser.add_argument("--memory", type=int, default=256, help="guest memory, MiB")
        parser.add_argument("--max-downtime", type=int, default=300, help="ms")
        parser.add_argument("--timeout", type=int, default=45, help="abort a run after this many seconds")
        parser.add_argument("--window", type=int, default=1, help="dirty-rate window, s")
        parser.add_argument("--rounds", type=int, default=3, help="rounds of the 1×/2×/4× window curve")

    def handle(self, **o):
        self.verbosity = o["verbosity"]
        lab, a, b = lab_with_hosts()
        user = bench_user()
        rows = []
        dirty_rates = [int(x) for x in o["dirty"].split(",")]
        caps = [int(x) for x in o["bandwidth"].split(",")]
        self.stdout.write(
            f"{'guest':>10} {'cap':>4} {'dirty':>6} | {'pred s':>7} {'act s':>7} {'err %':>6} | "
            f"{'pred dt':>7} {'act dt':>7} | {'predicted':>19} {'outcome':>9}"
        )
        for dirty in dirty_rates:
            name = f"bench-d{dirty}"
            lab.define_guest(name, o["memory"], dirty_mb=dirty)
            try:
                # One uncapped migration teaches the planner the link and the guest's zero pages.
                self._calibrate(lab, a, b, user, name)
                for cap in caps:
                    for _ in range(o["repeat"]):
                        row = self._run(lab, a, b, user, name, cap, o)
                        rows.append(row)
                        self._print(row)
            finally:
                lab.remove_guest(name)
        for host in (a, b):
            inventory.refresh_host(host)
        self._summary(rows)

    def _calibrate(self, lab, a, b, user, name) -> None:
        lab.reset_guest(name)
        time.sleep(2)
        run_here(queue_on_lab(a, b, user, name, max_downtime_ms=300))

    def _run(self, lab, a, b, user, name, cap, o) -> dict:
        lab.reset_guest(name)
        time.sleep(2)  # let the dirty loop settle
        inventory.refresh_host(a)
        vm = a.vms.get(name=name)
        # Rounds of the curve (1×, 2×, 4× the window), as the VM page measures by default;
        # a second per round covers libvirt's own overhead.
        windows = curve_windows(o["window"])
        duration = o["rounds"] * (sum(windows) + 1)
        measured = measure_series(vm.pk, o["window"], duration, str(uuid.uuid4()), "bench", curve=True)
        migration = queue_on_lab(
            a,
            b,
            user,
            name,
            prediction_for=predict_for,
            max_downtime_ms=o["max_downtime"],
            bandwidth_mib_s=cap,
            timeout_s=o["timeout"],
            timeout_action="abort",
        )
        prediction = migration.prediction
        migration = run_here(migration)
        plan = prediction.get("plan") or {}
        actual_s = migration.total_time_ms / 1000 if migration.total_time_ms else None
        predicted_s = plan.get("total_time_s")
        error_pct = None
        if actual_s and predicted_s is not None and migration.state == "succeeded":
            error_pct = 100 * abs(predicted_s - actual_s) / actual_s
        predicted_ok = plan.get("verdict") in ("converges", "converges_with_help")
        verdict_right = predicted_ok == (migration.state == "succeeded")
        return {
            "guest": name,
            "cap": cap,
            "dirty": prediction.get("dirty_rate_mib_s", 0.0),
            "readings": measured,
            "predicted_s": predicted_s,
            "actual_s": actual_s,
            "error_pct": error_pct,
            "predicted_downtime_ms": plan.get("downtime_ms"),
            "actual_downtime_ms": migration.downtime_ms,
            "verdict": plan.get("verdict", "no prediction"),
            "outcome": migration.state,
            "bad": (not verdict_right) or (error_pct is not None and error_pct >= BAD_ERROR_PCT),
            "curve": [(m.window_s, round(m.dirty_rate_mib_s, 1)) for m in latest_series(vm.uuid)],
            "predicted_passes": plan.get("iterations"),
            "actual_passes": migration.final_stats.get("memory_iteration"),
            "actual_setup_ms": migration.final_stats.get("setup_time"),
        }

    def _print(self, r: dict) -> None:
        def num(x, fmt):
            return format(x, fmt) if x is not None else "—"

        self.stdout.write(
            f"{r['guest']:>10} {r['cap']:>4} {r['dirty']:>6.1f} | {num(r['predicted_s'], '7.1f')} "
            f"{num(r['actual_s'], '7.1f')} {num(r['error_pct'], '6.1f')} | "
            f"{num(r['predicted_downtime_ms'], '7.0f')} {num(r['actual_downtime_ms'], '7.0f')} | "
            f"{r['verdict']:>19} {r['outcome']:>9}{'  BAD' if r['bad'] else ''}"
        )
        if self.verbosity > 1:
            self.stdout.write(
                f"{'':>10} curve={r['curve']} passes {r['predicted_passes']}/{r['actual_passes']} "
                f"setup_ms={r['actual_setup_ms']}"
            )

    def _summary(self, rows: list[dict]) -> None:
        errors = [r["error_pct"] for r in rows if r["error_pct"] is not None]
        median_error = statistics.median(errors) if errors else float("nan")
        bad_pct = 100 * sum(r["bad"] for r in rows) / len(rows) if rows else float("nan")
        self.stdout.write(f"runs={len(rows)} median_abs_error_pct={median_error:.1f} bad_pct={bad_pct:.1f}")
