"""How right are the predictions? Runs a matrix of real lab migrations
(guest size × dirtying pattern × cap × downtime × option): measures the dirty
rate first, predicts, migrates, and compares predicted with actual, per case,
per option and overall, with a 95 % interval on the bad share. Each finished
run also teaches the predictor (migrator.planning.learning), as a site's
own migrations would."""

from __future__ import annotations

import statistics
import subprocess
import time
import uuid

from django.core.management.base import BaseCommand

from hosts import gateway, inventory
from hosts.lab import DiskSpec
from migrator.executor import reconcile
from migrator.models import DirtyRateMeasurement
from migrator.planning.dirtyrate import curve_windows, measure_series
from migrator.planning.prediction import predict_for

from ._lab import bench_user, lab_with_hosts, queue_on_lab, run_here

BAD_ERROR_PCT = 25.0

# The options the predictor must hold on, as the wizard's form fields.
OPTIONS = {
    "pre-copy": {},
    "auto-converge": {"auto_converge": True},
    "multifd": {"parallel_connections": 2},
    "xbzrle": {"compression": "xbzrle"},
    # QEMU's multi-threaded zlib compression (level 1; the lab's libvirt 9.0
    # predates multifd zlib and zstd).
    "mt": {"compression": "mt"},
    # The guest's local disk copied first (NBD), then its memory.
    "copy-storage": {"disks": ["vda"]},
}
# A copy-storage guest's local disk, and the data written into it before each
# run (a block mirror copies only what was written).
DISK = DiskSpec("vda", size_mib=128)
DISK_DATA_MIB = 96
# Options run under four of the shapes only (one per cap and size, steady,
# hot and idle): copy-storage's disk adds the same to each, and mt's
# compression costs the same per MiB of pages.
SOME_SHAPES = (0, 2, 3, 5)
FEWER_SHAPES = {"copy-storage": SOME_SHAPES, "mt": SOME_SHAPES}
# Guest size (MiB) × dirtying × cap (MiB/s) × downtime (ms): a fractional
# design that varies each factor against a base case, run under every option.
# Dirtying: `dirty` MiB rewritten per second, as `writes` rewrites a second of
# a working set of dirty / writes MiB (writes > 1: a small set kept hot, whose
# unique dirtying over a window is far below the rewrite rate).
SHAPES = (
    {"memory": 256, "dirty": 4, "writes": 1, "cap": 32, "downtime": 300},
    {"memory": 256, "dirty": 24, "writes": 1, "cap": 32, "downtime": 300},
    {"memory": 256, "dirty": 12, "writes": 4, "cap": 16, "downtime": 300},
    {"memory": 512, "dirty": 12, "writes": 1, "cap": 32, "downtime": 300},
    {"memory": 256, "dirty": 24, "writes": 4, "cap": 32, "downtime": 1000},
    {"memory": 256, "dirty": 0, "writes": 1, "cap": 16, "downtime": 300},
    {"memory": 512, "dirty": 24, "writes": 4, "cap": 16, "downtime": 1000},
)
QUICK = ((0, "pre-copy"), (1, "auto-converge"), (2, "multifd"), (4, "xbzrle"), (2, "copy-storage"), (2, "mt"))


def wilson_interval(bad: int, runs: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a share, in per cent."""
    if runs == 0:
        return float("nan"), float("nan")
    share = bad / runs
    centre = (share + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z * ((share * (1 - share) / runs + z * z / (4 * runs * runs)) ** 0.5) / (1 + z * z / runs)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


class Command(BaseCommand):
    help = (
        "Benchmark the predictor against real lab migrations: guest size × dirtying pattern × cap × "
        "downtime × option (26 to 45 minutes; --quick: one case per option)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="one case per option (about 6 minutes)")
        parser.add_argument("--options", default=",".join(OPTIONS), help="options to run, comma-separated")
        parser.add_argument("--shapes", default="", help="shape numbers to run (0-based), comma-separated; empty: all")
        parser.add_argument("--repeat", type=int, default=1)
        parser.add_argument("--timeout", type=int, default=60, help="abort a run after this many seconds")
        parser.add_argument("--window", type=int, default=1, help="dirty-rate window, s")
        parser.add_argument("--rounds", type=int, default=3, help="rounds of the 1×/2×/4× window curve")

    def handle(self, **o):
        self.verbosity = o["verbosity"]
        lab, a, b = lab_with_hosts()
        user = bench_user()
        # Records an earlier, interrupted run left behind would refuse the first migrations.
        reconcile(wait_s=30)
        wanted = [name.strip() for name in o["options"].split(",") if name.strip()]
        cases = QUICK if o["quick"] else [(i, opt) for opt in wanted for i in range(len(SHAPES))]
        cases = [(i, opt) for i, opt in cases if opt in wanted]
        if o["shapes"]:
            shapes = {int(n) for n in o["shapes"].split(",") if n.strip()}
            cases = [(i, opt) for i, opt in cases if i in shapes]
        cases = [(i, opt) for i, opt in cases if o["quick"] or i in FEWER_SHAPES.get(opt, range(len(SHAPES)))]
        rows = []
        self.stdout.write(
            f"{'option':>13} {'MiB':>4} {'dirty':>5} {'w/s':>3} {'cap':>4} {'dt':>5} | {'pred s':>7} "
            f"{'range':>11} {'act s':>7} {'err %':>6} | {'pred dt':>7} {'act dt':>7} | {'outcome':>9}"
        )
        # A guest per shape, and one with a local disk for copy-storage.
        for shape_index, with_disk in sorted({(i, opt == "copy-storage") for i, opt in cases}):
            shape = SHAPES[shape_index]
            name = f"bench-s{shape_index}" + ("-disk" if with_disk else "")
            writes = max(1, shape["writes"])
            lab.define_guest(
                name,
                shape["memory"],
                dirty_mb=shape["dirty"] // writes,
                dirty_sleep=1 / writes,
                disks=(DISK,) if with_disk else (),
            )
            try:
                # One uncapped migration teaches the planner the link and the guest's zero pages.
                self._calibrate(lab, a, b, user, name, with_disk)
                for index, option in cases:
                    if index != shape_index or (option == "copy-storage") != with_disk:
                        continue
                    for _ in range(o["repeat"]):
                        row = self._run(lab, a, b, user, name, shape, option, o)
                        rows.append(row)
                        self._print(row)
            finally:
                lab.remove_guest(name)
        for host in (a, b):
            inventory.refresh_host(host)
        self._summary(rows)

    def _calibrate(self, lab, a, b, user, name, with_disk: bool) -> None:
        self._boot(lab, name, with_disk)
        time.sleep(2)
        run_here(queue_on_lab(a, b, user, name, max_downtime_ms=300, **({"disks": ["vda"]} if with_disk else {})))

    @staticmethod
    def _boot(lab, name: str, with_disk: bool) -> None:
        """The guest afresh on lab-a; a disk guest's disk holds DISK_DATA_MIB first."""
        if not with_disk:
            lab.reset_guest(name)
            return
        lab.park_guest(name)
        image = lab.host_path("A", str(lab.image_path(name, DISK)))
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {DISK_DATA_MIB}M", str(image)],
            check=True,
            capture_output=True,
        )
        gateway.start_domain(lab.uri("A"), name)
        lab.wait_booted(name, "A")

    def _run(self, lab, a, b, user, name, shape, option, o) -> dict:
        self._boot(lab, name, option == "copy-storage")
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
            max_downtime_ms=shape["downtime"],
            bandwidth_mib_s=shape["cap"],
            timeout_s=o["timeout"],
            timeout_action="abort",
            **OPTIONS[option],
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
        spread = prediction.get("range") or {}
        inside = (
            actual_s is not None
            and migration.state == "succeeded"
            and (spread.get("low_s") or 0) <= actual_s <= (spread.get("high_s") or float("inf"))
        )
        return {
            "guest": name,
            "option": option,
            "shape": shape,
            "low_s": spread.get("low_s"),
            "high_s": spread.get("high_s"),
            "inside": inside,
            "learned": (prediction.get("learned") or {}).get("samples", 0),
            "cap": shape["cap"],
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
            "curve": [(m.window_s, round(m.dirty_rate_mib_s, 1)) for m in DirtyRateMeasurement.latest_series(vm.uuid)],
            "predicted_passes": plan.get("iterations"),
            "actual_passes": migration.final_stats.get("memory_iteration"),
            "actual_setup_ms": migration.final_stats.get("setup_time"),
        }

    def _print(self, r: dict) -> None:
        def num(x, fmt):
            return format(x, fmt) if x is not None else "—"

        shape = r["shape"]
        spread = f"{num(r['low_s'], '.1f')}-{num(r['high_s'], '.1f')}"
        self.stdout.write(
            f"{r['option']:>13} {shape['memory']:>4} {r['dirty']:>5.1f} {shape['writes']:>3} {r['cap']:>4} "
            f"{shape['downtime']:>5} | {num(r['predicted_s'], '7.1f')} {spread:>11} "
            f"{num(r['actual_s'], '7.1f')} {num(r['error_pct'], '6.1f')} | "
            f"{num(r['predicted_downtime_ms'], '7.0f')} {num(r['actual_downtime_ms'], '7.0f')} | "
            f"{r['outcome']:>9}{'' if r['inside'] else ' out'}{'  BAD' if r['bad'] else ''}"
        )
        if self.verbosity > 1:
            self.stdout.write(
                f"{'':>10} curve={r['curve']} passes {r['predicted_passes']}/{r['actual_passes']} "
                f"setup_ms={r['actual_setup_ms']}"
            )

    def _summary(self, rows: list[dict]) -> None:
        def median_error(subset: list[dict]) -> float:
            errors = [r["error_pct"] for r in subset if r["error_pct"] is not None]
            return statistics.median(errors) if errors else float("nan")

        self.stdout.write(f"{'option':>13} {'runs':>4} {'median err %':>12} {'bad %':>6} {'in range %':>10}")
        for option in sorted({r["option"] for r in rows}):
            subset = [r for r in rows if r["option"] == option]
            bad = 100 * sum(r["bad"] for r in subset) / len(subset)
            inside = 100 * sum(r["inside"] for r in subset) / len(subset)
            self.stdout.write(
                f"{option:>13} {len(subset):>4} {median_error(subset):>12.1f} {bad:>6.1f} {inside:>10.1f}"
            )
        bad_count = sum(r["bad"] for r in rows)
        bad_pct = 100 * bad_count / len(rows) if rows else float("nan")
        low, high = wilson_interval(bad_count, len(rows))
        self.stdout.write(f"bad share {bad_pct:.1f} % (95 % interval {low:.1f}-{high:.1f} %)")
        self.stdout.write(f"runs={len(rows)} median_abs_error_pct={median_error(rows):.1f} bad_pct={bad_pct:.1f}")
