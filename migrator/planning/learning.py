"""What a site's own migrations teach the predictor.

After every successful migration the record holds both the model's plan and
libvirt's final figures. Their ratio (actual total time over the model's) is a
residual: the part of the migration the model does not capture (TCG's slower
page copying, multifd's per-channel overhead, how a guest's dirtying slows
under auto-converge's throttle...). Residuals are kept per host pair and per
option set, read from the records themselves (so every worker, on every
machine, learns the same), and used twice:

- the median, shrunk toward 1 while there are few, corrects the next
  prediction of the same kind (`factor`);
- their spread, with the spread of the dirty-rate readings, gives the
  predicted range (`prediction.predict_for`).

A record's own prediction keeps the model's figure apart from the corrected
one (`model_total_time_s`), so corrections never compound.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from ..models import Migration, MigrationState
from ..parameters import MigrationParameters
from . import planner

# The newest residuals that count; older ones describe another state of the site.
RESIDUAL_WINDOW = 20
# Below this many residuals their spread says nothing: the range uses DEFAULT_SPREAD.
MIN_FOR_SPREAD = 3
# Before a site has history, the model alone is this uncertain (ratio of actual
# to predicted, p10 and p90).
DEFAULT_SPREAD = (0.8, 1.3)
# A ratio beyond these is a broken record (a stall, a paused guest), not a lesson.
RATIO_LIMITS = (0.2, 5.0)
# How far a few residuals move the prediction: the median is shrunk toward 1
# (the model as it is) by n / (n + SHRINK), so one noisy migration moves the
# next prediction a third of the way, ten move it most of the way.
SHRINK = 2


def option_key(parameters: MigrationParameters | dict[str, Any]) -> str:
    """The options that change how a migration runs, as one key: residuals
    of a multifd migration say nothing of a plain pre-copy."""
    p = MigrationParameters.from_record(parameters) if isinstance(parameters, dict) else parameters
    parts = []
    if p.disks:
        parts.append("copy-storage")
    if p.timeout_action == "postcopy":
        parts.append("post-copy")
    if p.compression:
        parts.append(p.compression)
    if (p.parallel_connections or 0) > 1:
        parts.append("multifd")
    if p.auto_converge:
        parts.append("auto-converge")
    return "+".join(parts) or "pre-copy"


def residual(migration: Migration) -> float | None:
    """Actual total time over the model's for one finished migration, or None
    when the record cannot say (no prediction, no time, an outlier)."""
    prediction = migration.prediction or {}
    if migration.state != MigrationState.SUCCEEDED or not prediction.get("available"):
        return None
    if prediction.get("model_version", 1) != planner.MODEL_VERSION:
        return None  # another version of the model missed by other amounts
    if prediction.get("zero_pages_known") is False:
        # A VM's first migration: the model did not know its zero pages yet, and
        # the next prediction will; the miss would teach the wrong lesson.
        return None
    model_s = prediction.get("model_total_time_s") or (prediction.get("plan") or {}).get("total_time_s")
    if not model_s or not migration.total_time_ms:
        return None
    ratio = migration.total_time_ms / 1000.0 / float(model_s)
    return ratio if RATIO_LIMITS[0] <= ratio <= RATIO_LIMITS[1] else None


@dataclass(frozen=True)
class Learned:
    key: str
    samples: int
    factor: float  # median residual: multiply the model's time by it
    low: float  # p10 residual
    high: float  # p90 residual
    scope: str  # "host pair", "all host pairs" or "none"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < MIN_FOR_SPREAD:
        return DEFAULT_SPREAD
    cuts = statistics.quantiles(values, n=10, method="inclusive")
    return cuts[0], cuts[-1]


def _residuals(**filters: Any) -> dict[str, list[float]]:
    """Residuals by option key, newest first, for the records matching `filters`."""
    rows = (
        Migration.objects.filter(state=MigrationState.SUCCEEDED, total_time_ms__isnull=False, **filters)
        .exclude(prediction={})
        .order_by("-finished_at")
        .only("state", "prediction", "total_time_ms", "parameters")[: RESIDUAL_WINDOW * 10]
    )
    by_key: dict[str, list[float]] = {}
    for m in rows:
        ratio = residual(m)
        if ratio is not None:
            found = by_key.setdefault(option_key(m.parameters), [])
            if len(found) < RESIDUAL_WINDOW:
                found.append(ratio)
    return by_key


def shrunk_factor(ratios: list[float]) -> float:
    """The median residual, pulled toward 1 by SHRINK pseudo-observations."""
    n = len(ratios)
    return 1.0 + (statistics.median(ratios) - 1.0) * n / (n + SHRINK)


def learned(source_name: str, destination_name: str, key: str) -> Learned:
    """What earlier migrations of the same kind taught: first between the same
    two hosts, else between any hosts; with no history, the model as it is."""
    for scope, filters in (
        ("host pair", {"source_name": source_name, "destination_name": destination_name}),
        ("all host pairs", {}),
    ):
        ratios = _residuals(**filters).get(key, [])
        if ratios:
            low, high = _quantiles(ratios)
            factor = shrunk_factor(ratios)
            return Learned(key, len(ratios), factor, min(low, factor), max(high, factor), scope)
    return Learned(key, 0, 1.0, *DEFAULT_SPREAD, "none")


def learned_from(source_name: str) -> list[dict[str, Any]]:
    """For a host's page: what its migrations to each destination taught, per option set."""
    pairs = (
        Migration.objects.filter(source_name=source_name, state=MigrationState.SUCCEEDED)
        .order_by("destination_name")
        .values_list("destination_name", flat=True)
        .distinct()
    )
    rows = []
    for destination in pairs:
        for key, ratios in sorted(_residuals(source_name=source_name, destination_name=destination).items()):
            low, high = _quantiles(ratios)
            rows.append(
                {
                    "destination": destination,
                    "key": key,
                    "samples": len(ratios),
                    "factor": shrunk_factor(ratios),
                    "low": low,
                    "high": high,
                    "spread_known": len(ratios) >= MIN_FOR_SPREAD,
                }
            )
    return rows


def vm_history(vm_uuid: str, limit: int = 10) -> list[dict[str, Any]]:
    """For a VM's page: each recent migration's predicted range against its actual time."""
    rows = []
    for m in Migration.objects.filter(vm_uuid=vm_uuid, state=MigrationState.SUCCEEDED).order_by("-finished_at")[:limit]:
        prediction = m.prediction or {}
        if not prediction.get("available") or not m.total_time_ms:
            continue
        spread = prediction.get("range") or {}
        actual_s = m.total_time_ms / 1000.0
        rows.append(
            {
                "migration": m,
                "key": option_key(m.parameters),
                "predicted_s": prediction.get("plan", {}).get("total_time_s"),
                "low_s": spread.get("low_s"),
                "high_s": spread.get("high_s"),
                "actual_s": actual_s,
                "inside": spread.get("low_s") is not None and spread["low_s"] <= actual_s <= spread["high_s"],
            }
        )
    return rows


# Before a site has finished migrations, each is assumed to hold its slot this
# long beyond libvirt's job: the worker's pickup, its re-checks and images
# before the job, the clean-up after it.
DEFAULT_SLOT_OVERHEAD_S = 2.0
SLOT_OVERHEAD_WINDOW = 20


def slot_overhead(source_name: str) -> tuple[float, str]:
    """How long a migration out of `source_name` holds its slot beyond
    libvirt's own job, and what says so: the median over the source's newest
    successes (the site's when the source has none), or the default."""
    done = Migration.objects.filter(
        state=MigrationState.SUCCEEDED,
        started_at__isnull=False,
        finished_at__isnull=False,
        total_time_ms__isnull=False,
    ).order_by("-finished_at")
    for rows, whose in ((done.filter(source_name=source_name), f"{source_name}'s"), (done, "the site's")):
        spans = rows.values_list("started_at", "finished_at", "total_time_ms")[:SLOT_OVERHEAD_WINDOW]
        gaps = [max(0.0, (end - start).total_seconds() - ms / 1000.0) for start, end, ms in spans]
        if gaps:
            median = statistics.median(gaps)
            return median, (
                f"each migration holds its slot {median:.1f} s beyond its copy (preparing and cleaning up: "
                f"the median of {whose} last {len(gaps)})"
            )
    return DEFAULT_SLOT_OVERHEAD_S, (
        f"each migration holds its slot {DEFAULT_SLOT_OVERHEAD_S:.1f} s beyond its copy (preparing and "
        "cleaning up; assumed until migrations have finished here)"
    )
