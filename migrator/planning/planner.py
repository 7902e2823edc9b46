"""Convergence planner for QEMU pre-copy live migration.

Pure functions and frozen dataclasses, no I/O: the dashboard feeds in what it
measured (memory size, dirty rate, link speed) and the migration settings, and
gets back a predicted outcome plus verified parameter changes that would help.

The model follows QEMU's own loop (migration/migration.c, migration/ram.c):
pass 1 sends all of RAM, every later pass resends what the guest dirtied during
the previous one, and QEMU switches over once the pending data fits into
bandwidth x downtime-limit.  The dirty rate enters as a curve of unique MiB
dirtied against time, fitted to every page-sampling reading (``fit_dirty_curve``),
and a plan must also converge with ``rate_margin`` more dirtying (``evaluate``).
Sizes are MiB, rates MiB/s, times s unless the name says ``_ms``.

It is one module of some 600 lines because it is one model: the curve fit,
the pass loop, the options that change the loop and the recommendations that
re-run it share the same PlanInput and read best side by side.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple

MIB = 1024 * 1024

# Raised whenever the model's figures change. A residual is what one version of
# the model missed; measured against another version's figure it would correct
# for errors that version no longer makes (learning.residual). Records from
# before versions were kept count as version 1.
MODEL_VERSION = 3

# QEMU defaults for auto-converge (cpu-throttle-initial/-increment, max-cpu-throttle,
# throttle-trigger-threshold); the planner uses them as fixed constants.
THROTTLE_INITIAL_PCT = 20
THROTTLE_INCREMENT_PCT = 10
THROTTLE_MAX_PCT = 99
THROTTLE_TRIGGER_THRESHOLD_PCT = 50
# migration_trigger_throttle() only acts on the *second* over-threshold period
# (dirty_rate_high_cnt >= 2) and then resets the counter, so every throttle step
# costs two periods; a period is only evaluated once more than 1 s has passed.
THROTTLE_TRIGGERS_PER_STEP = 2
THROTTLE_PERIOD_MIN_S = 1.0
# QEMU rejects downtime-limit above 2000 s, so never recommend more.
QEMU_MAX_DOWNTIME_MS = 2_000_000

# Effective bandwidth multipliers (page bytes per wire byte), deliberately low:
COMPRESSION_MULTIPLIER: dict[str, float] = {
    # Legacy multi-thread zlib compression is usually CPU-bound on the source, so expect little.
    "mt": 1.3,
    # multifd zlib roughly halves typical guest memory, minus CPU stalls; assume 1.5x.
    "zlib": 1.5,
    # multifd zstd compresses better and faster than zlib; assume 1.8x.
    "zstd": 1.8,
    # XBZRLE only sends deltas of pages it sent before, so it helps from pass 2 on only.
    "xbzrle": 1.5,
}
# Several multifd channels cannot beat a bandwidth cap; on an uncapped link they
# only hide per-stream CPU/latency limits, so grant +5 % per extra channel, at most +25 %.
MULTIFD_GAIN_PER_CHANNEL = 0.05
MULTIFD_GAIN_MAX = 1.25

# Near the boundary, pre-copy is decided by the guest's bursts rather than its average
# rate, and page sampling reads only a few hundred pages: a plan that converges at the
# measured rate but stalls at 20 % more is too close to call, and reported as not converging.
RATE_MARGIN = 0.2

# The quietest end of a dirty-rate spread: dirty_scale must stay positive.
MIN_DIRTY_SCALE = 0.01

DETAIL_LIMIT = 100  # passes kept in iterations_detail; the counters stay exact
HARD_PASS_LIMIT = 100_000  # safety net when a timeout keeps the loop going
TIMEOUT_ACTIONS = ("suspend", "postcopy", "abort")


class Verdict(StrEnum):
    CONVERGES = "converges"
    CONVERGES_WITH_HELP = "converges_with_help"
    WILL_NOT_CONVERGE = "will_not_converge"


_RANK = {Verdict.WILL_NOT_CONVERGE: 0, Verdict.CONVERGES_WITH_HELP: 1, Verdict.CONVERGES: 2}


@dataclass(frozen=True)
class PlanInput:
    memory_mib: float
    dirty_rate_mib_s: float
    bandwidth_mib_s: float
    max_downtime_ms: float = 300.0  # QEMU default downtime-limit
    # (window_s, rate_mib_s) measured over several windows; longer windows give lower
    # per-second rates because the same pages get re-dirtied.  Overrides dirty_rate_mib_s.
    dirty_rate_curve: tuple[tuple[float, float], ...] = ()
    bandwidth_is_cap: bool = True  # False: bandwidth_mib_s is a measured link throughput
    auto_converge: bool = False
    compression: str | None = None  # "mt" | "zlib" | "zstd" | "xbzrle" | None
    # What earlier migrations with the same stream compressor (mt, zlib, zstd)
    # measured: page bytes per wire byte (None: COMPRESSION_MULTIPLIER), and the
    # MiB of guest pages the source's compression threads get through per second
    # of their own time, zero pages included (None: not measured yet, taken as
    # no cost; see page_rate).
    compression_ratio: float | None = None
    compress_mib_s: float | None = None
    parallel_connections: int = 1  # multifd channels
    postcopy: bool = False  # switch to post-copy after the first pass
    timeout_s: float | None = None  # counted from the start, setup included
    timeout_action: str | None = None  # None with a timeout means "suspend", like virsh
    # The action also fires once the remaining data has not fallen for this long.
    progress_timeout_s: float | None = None
    page_size_bytes: int = 4096
    zero_page_fraction: float = 0.0  # share of RAM that is zero pages (nearly free in pass 1)
    switchover_overhead_ms: float = 50.0  # device state etc., added to every downtime
    # QEMU lifts the bandwidth cap for the final stop-and-copy (migration_completion
    # sets the rate limit to INT64_MAX), so the last pages go at link speed.
    final_copy_bandwidth_mib_s: float | None = None
    setup_s: float = 0.3
    # Local disks copied first (libvirt's NBD drive-mirror, under the same
    # bandwidth limit) before the memory's first pass starts.
    disk_mib: float = 0.0
    # Their unwritten blocks. The mirror reads them as zeros and, under a cap,
    # counts them against it like data: QEMU's mirror leaves zeros out of its
    # rate limit only when the target can write zeroes with unmap, which the
    # NBD client cannot tell it. Uncapped, only the data counts: the zeros go as
    # write-zeroes requests, which carry none (not measured on the lab).
    disk_unwritten_mib: float = 0.0
    # A plan must still converge when the guest dirties this much more than measured
    # (see ``evaluate``); 0 judges the measured rate alone.
    rate_margin: float = RATE_MARGIN
    dirty_scale: float = 1.0  # multiplies every dirtied amount; evaluate() sets it
    max_iterations: int = 30
    horizon_s: float = 3600.0

    def __post_init__(self) -> None:
        # Frozen + hashable: callers may pass lists (e.g. straight from JSON).
        curve = tuple((float(w), float(r)) for w, r in self.dirty_rate_curve)
        object.__setattr__(self, "dirty_rate_curve", curve)
        if self.memory_mib <= 0 or self.bandwidth_mib_s <= 0:
            raise ValueError("memory_mib and bandwidth_mib_s must be positive")
        if self.dirty_rate_mib_s < 0 or any(w <= 0 or r < 0 for w, r in curve):
            raise ValueError("dirty rates must be >= 0 and curve windows > 0")
        if self.max_downtime_ms < 0 or self.page_size_bytes <= 0:
            raise ValueError("max_downtime_ms must be >= 0 and page_size_bytes > 0")
        if not 0.0 <= self.zero_page_fraction < 1.0:
            raise ValueError("zero_page_fraction must be in [0, 1)")
        if self.disk_mib < 0 or self.disk_unwritten_mib < 0:
            raise ValueError("disk_mib and disk_unwritten_mib must be >= 0")
        if (self.compression_ratio is not None and self.compression_ratio <= 0) or (
            self.compress_mib_s is not None and self.compress_mib_s <= 0
        ):
            raise ValueError("compression_ratio and compress_mib_s must be positive")
        if self.rate_margin < 0 or self.dirty_scale <= 0:
            raise ValueError("rate_margin must be >= 0 and dirty_scale > 0")
        if self.timeout_action not in (None, *TIMEOUT_ACTIONS):
            raise ValueError(f"timeout_action must be one of {TIMEOUT_ACTIONS} or None")


class IterationDetail(NamedTuple):
    sent_mib: float
    duration_s: float
    dirtied_mib: float
    throttle_pct: int


@dataclass(frozen=True)
class Recommendation:
    parameter: str
    value: Any
    explanation: str
    # Exactly the PlanInput changes that were re-run: replace(inp, **changes).
    changes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "value": self.value,
            "explanation": self.explanation,
            "changes": dict(self.changes),
        }


@dataclass(frozen=True)
class Plan:
    verdict: Verdict
    iterations: int  # live passes; the final stop-and-copy is reported as downtime
    total_time_s: float
    data_sent_mib: float  # page data before compression, final copy included
    downtime_ms: float | None  # None when the guest never switches over
    throttle_pct_final: int
    reason: str
    mode: str  # "precopy" | "postcopy" | "suspend" | "abort" | "none"
    iterations_detail: tuple[IterationDetail, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    timeout_fired: str = ""  # "completion" | "progress": which timeout took its action
    timeout_at_s: float | None = None  # when it did

    def as_dict(self) -> dict[str, Any]:
        return {
            "timeout_fired": self.timeout_fired,
            "timeout_at_s": None if self.timeout_at_s is None else round(self.timeout_at_s, 3),
            "verdict": self.verdict.value,
            "iterations": self.iterations,
            "total_time_s": round(self.total_time_s, 3),
            "data_sent_mib": round(self.data_sent_mib, 3),
            "downtime_ms": None if self.downtime_ms is None else round(self.downtime_ms, 1),
            "throttle_pct_final": self.throttle_pct_final,
            "reason": self.reason,
            "mode": self.mode,
            "iterations_detail": [d._asdict() for d in self.iterations_detail],
            "recommendations": [r.as_dict() for r in self.recommendations],
        }


@functools.lru_cache(maxsize=256)
def fit_dirty_curve(curve: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """Points (window_s, unique MiB dirtied) of the curve that best explains the readings.

    Unique dirty memory D(w) = rate(w) * w can only grow with the window, and grows ever
    more slowly as more of the working set is already dirty: it is non-decreasing and
    concave.  Page sampling reads a few hundred pages, so single readings are noisy
    (a short window can miss a burst, or catch one and read above the working set).
    The fit averages repeated windows, pools neighbours that break monotonicity
    (weighted isotonic regression, pool-adjacent-violators), then takes the least
    concave majorant through the origin, which never under-states what was measured.
    """
    by_window: dict[float, list[float]] = {}
    for w, r in curve:
        by_window.setdefault(w, []).append(r * w)
    # Blocks of (windows, sum of D, readings); pool while a block is below its predecessor.
    blocks: list[tuple[list[float], float, int]] = []
    for w in sorted(by_window):
        blocks.append(([w], sum(by_window[w]), len(by_window[w])))
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            ws1, s1, n1 = blocks.pop()
            ws0, s0, n0 = blocks.pop()
            blocks.append((ws0 + ws1, s0 + s1, n0 + n1))
    levels = [(w, total / n) for ws, total, n in blocks for w in ws]
    hull: list[tuple[float, float]] = [(0.0, 0.0)]
    for x, y in levels:
        # Pop the last hull point while it lies on or below the chord to (x, y).
        while len(hull) > 1:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (y1 - y0) * (x - x0) <= (y - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append((x, y))
    return tuple(hull)


def dirtied_mib(inp: PlanInput, duration_s: float, throttle_pct: float = 0.0) -> float:
    """Unique MiB the guest dirties in ``duration_s`` of wall time, clamped to RAM.

    A throttled guest runs only (1 - p) of the wall time, so it gets D((1-p)t): with a
    single rate that is exactly rate*(1-p)*t.  With a curve, D follows the fitted points
    (``fit_dirty_curve``) linearly; beyond the longest window it keeps the slope of the
    last segment (new pages only).  ``dirty_scale`` multiplies the result.
    """
    t = duration_s * (1.0 - throttle_pct / 100.0)
    if t <= 0:
        return 0.0
    return min(inp.memory_mib, inp.dirty_scale * _unique_dirty(inp, t))


def _unique_dirty(inp: PlanInput, t: float) -> float:
    if not inp.dirty_rate_curve:
        return inp.dirty_rate_mib_s * t
    points = fit_dirty_curve(inp.dirty_rate_curve)
    for (w0, d0), (w1, d1) in itertools.pairwise(points):
        if t <= w1:
            return d0 + (d1 - d0) * (t - w0) / (w1 - w0)
    (w0, d0), (w1, d1) = points[-2], points[-1]
    return d1 + (d1 - d0) / (w1 - w0) * (t - w1)


def _page_round(mib: float, page_size_bytes: int) -> float:
    # Dirty tracking works on whole pages, so a partly written page is resent whole.
    pages = math.ceil(mib * MIB / page_size_bytes - 1e-9)
    return pages * page_size_bytes / MIB


def _wire_bandwidth(inp: PlanInput) -> float:
    if inp.bandwidth_is_cap or inp.parallel_connections <= 1:
        return inp.bandwidth_mib_s
    gain = 1.0 + MULTIFD_GAIN_PER_CHANNEL * (inp.parallel_connections - 1)
    return inp.bandwidth_mib_s * min(gain, MULTIFD_GAIN_MAX)


def disk_copy_s(inp: PlanInput) -> float:
    """Seconds to copy the local disks before memory: their data at the
    bandwidth (the mirror runs under the migration's limit; compression and
    multifd do not apply to it), and under a cap their unwritten blocks too."""
    mib = inp.disk_mib + (inp.disk_unwritten_mib if inp.bandwidth_is_cap else 0.0)
    return mib / inp.bandwidth_mib_s if mib else 0.0


STREAM_COMPRESSORS = ("mt", "zlib", "zstd")


def _multipliers(inp: PlanInput) -> tuple[float, float]:
    """(first pass, later passes and final copy) page-bytes per wire-byte."""
    compression = inp.compression or ""
    if compression in STREAM_COMPRESSORS and inp.compression_ratio is not None:
        return inp.compression_ratio, inp.compression_ratio
    mult = COMPRESSION_MULTIPLIER.get(compression, 1.0)
    return (1.0 if compression == "xbzrle" else mult), mult


def _compress_pace(inp: PlanInput) -> float | None:
    if inp.compress_mib_s is not None and (inp.compression or "") in STREAM_COMPRESSORS:
        return inp.compress_mib_s
    return None


def page_rate(inp: PlanInput, wire_mib_s: float, mult: float) -> float:
    """Page data copied per second: the wire's bytes times what compression
    packs into each, slowed by the compression threads. Each thread holds one
    page, and the migration thread hands out the next ones only between its
    sends, which the bandwidth limit paces: compressing and sending take turns,
    so their times add (1 MiB of pages costs 1/compress + 1/(wire x ratio))."""
    rate = wire_mib_s * mult
    if (pace := _compress_pace(inp)) is not None:
        rate = 1.0 / (1.0 / rate + 1.0 / pace)
    return rate


def zero_pages_s(inp: PlanInput) -> float:
    """What the first pass spends on zero pages: nothing on the wire, but with
    a stream compressor they pass through the compression threads too (QEMU
    finds them zero there), one page at a time like the others."""
    pace = _compress_pace(inp)
    return inp.memory_mib * inp.zero_page_fraction / pace if pace else 0.0


def _result(
    verdict: Verdict,
    mode: str,
    n: int,
    total_s: float,
    sent: float,
    downtime_s: float | None,
    throttle: int,
    reason: str,
    details: list[IterationDetail],
) -> Plan:
    return Plan(
        verdict,
        n,
        total_s,
        sent,
        None if downtime_s is None else downtime_s * 1000,
        throttle,
        reason,
        mode,
        tuple(details),
    )


def _simulate(inp: PlanInput) -> Plan:
    """Run the pass-by-pass model; no recommendations (those call back into here)."""
    wire = _wire_bandwidth(inp)
    first_mult, later_mult = _multipliers(inp)
    final_bw = page_rate(inp, max(wire, inp.final_copy_bandwidth_mib_s or 0.0), later_mult)
    # QEMU compares pending page bytes with *measured wire* bandwidth x downtime-limit:
    # below the cap when the compression threads set the pace.
    measured_wire = page_rate(inp, wire, later_mult) / later_mult
    threshold = measured_wire * inp.max_downtime_ms / 1000.0
    overhead_s = inp.switchover_overhead_ms / 1000.0
    timeout = inp.timeout_s
    fired = "completion"
    action = (inp.timeout_action or "suspend") if timeout is not None or inp.progress_timeout_s else None
    elapsed, sent_total, n = inp.setup_s + disk_copy_s(inp), 0.0, 0
    to_send = inp.memory_mib * (1.0 - inp.zero_page_fraction)
    throttle, high_cnt = 0, 0
    period_dirty, period_xfer, period_s = 0.0, 0.0, inp.setup_s
    details: list[IterationDetail] = []
    prev_pending = math.inf
    help_note = ""

    def on_timeout(pending: float) -> Plan:
        plan = _on_timeout(pending)
        return replace(plan, timeout_fired=fired, timeout_at_s=timeout)

    def _on_timeout(pending: float) -> Plan:
        at = (
            f"the {timeout:g} s timeout"
            if fired == "completion"
            else f"the progress timeout ({timeout:g} s: the remaining data stopped falling "
            f"{inp.progress_timeout_s:g} s before)"
        )
        if action == "abort":
            return _result(
                Verdict.WILL_NOT_CONVERGE,
                "abort",
                n,
                timeout,
                sent_total,
                None,
                throttle,
                f"The migration is cancelled at {at} with {pending:.1f} MiB still to copy.",
                details,
            )
        if action == "postcopy":
            return _result(
                Verdict.CONVERGES_WITH_HELP,
                "postcopy",
                n,
                timeout + overhead_s + pending / wire,
                sent_total + pending,
                overhead_s,
                throttle,
                f"At {at} the guest moves "
                f"to the destination (post-copy), which then fetches the remaining "
                f"{pending:.1f} MiB while it runs.",
                details,
            )
        down = pending / final_bw + overhead_s
        return _result(
            Verdict.CONVERGES_WITH_HELP,
            "suspend",
            n,
            timeout + down,
            sent_total + pending,
            down,
            throttle,
            f"At {at} the "
            f"guest is paused and stays paused for about {down:.1f} s while the "
            f"remaining {pending:.1f} MiB are copied.",
            details,
        )

    if timeout is not None and elapsed >= timeout:
        return on_timeout(inp.memory_mib)
    while True:
        bw = page_rate(inp, wire, first_mult if n == 0 else later_mult)
        duration = to_send / bw + (zero_pages_s(inp) if n == 0 else 0.0)
        if timeout is not None and elapsed + duration > timeout:
            # Timeout strikes mid-pass: the unsent part of this pass plus what was dirtied
            # since it began is pending (overlap counted twice: conservative).
            part = timeout - elapsed
            pending = min(inp.memory_mib, to_send - bw * part + dirtied_mib(inp, part, throttle))
            sent_total += bw * part
            return on_timeout(_page_round(pending, inp.page_size_bytes))
        dirtied = _page_round(dirtied_mib(inp, duration, throttle), inp.page_size_bytes)
        if len(details) < DETAIL_LIMIT:
            details.append(IterationDetail(to_send, duration, dirtied, throttle))
        n += 1
        elapsed += duration
        sent_total += to_send
        pending = dirtied
        if inp.auto_converge:
            # migration_trigger_throttle(), evaluated at the bitmap sync ending each pass.
            period_dirty += dirtied
            period_xfer += duration * min(wire, bw / (first_mult if n == 1 else later_mult))
            period_s += duration
            if period_s > THROTTLE_PERIOD_MIN_S:
                if period_dirty > period_xfer * THROTTLE_TRIGGER_THRESHOLD_PCT / 100:
                    high_cnt += 1
                    if high_cnt >= THROTTLE_TRIGGERS_PER_STEP:
                        high_cnt = 0
                        throttle = (
                            THROTTLE_INITIAL_PCT
                            if throttle == 0
                            else min(throttle + THROTTLE_INCREMENT_PCT, THROTTLE_MAX_PCT)
                        )
                period_dirty, period_xfer, period_s = 0.0, 0.0, 0.0
        if pending <= threshold:
            down = pending / final_bw + overhead_s
            verdict = Verdict.CONVERGES_WITH_HELP if throttle else Verdict.CONVERGES
            if throttle:
                help_note = f" once auto-converge slowed the guest CPUs by {throttle} %"
            return _result(
                verdict,
                "precopy",
                n,
                elapsed + down,
                sent_total + pending,
                down,
                throttle,
                f"Pre-copy converges in {n} pass(es){help_note}: the "
                f"last {pending:.1f} MiB fit in the {inp.max_downtime_ms:g} ms "
                f"downtime budget ({threshold:.1f} MiB).",
                details,
            )
        if inp.postcopy and n == 1:
            # libvirt's post-copy-after-precopy: start post-copy once the first pass is done.
            return _result(
                Verdict.CONVERGES_WITH_HELP,
                "postcopy",
                n,
                elapsed + overhead_s + pending / wire,
                sent_total + pending,
                overhead_s,
                throttle,
                f"After the first pass the guest moves to the "
                f"destination (post-copy), which then fetches the remaining "
                f"{pending:.1f} MiB while it runs.",
                details,
            )
        stalled = pending >= prev_pending and (not inp.auto_converge or throttle >= THROTTLE_MAX_PCT)
        if stalled and inp.progress_timeout_s and fired == "completion":
            # The remaining data last reached its low at the end of the
            # previous pass; the progress timeout counts from there.
            pass_start = elapsed - duration
            deadline = pass_start + inp.progress_timeout_s
            if timeout is None or deadline < timeout:
                timeout, fired = deadline, "progress"
                if deadline < elapsed:
                    # It fired during this pass: what of it was not sent yet is pending.
                    part = deadline - pass_start
                    unsent = to_send - bw * part
                    sent_total -= unsent
                    pending = min(inp.memory_mib, unsent + dirtied_mib(inp, part, throttle))
                    return on_timeout(_page_round(pending, inp.page_size_bytes))
        if stalled and timeout is not None:
            # Every further pass is identical; skip whole passes up to the timeout.
            skip = max(0, math.floor((timeout - elapsed) / (pending / bw)) - 1)
            n += skip
            elapsed += skip * pending / bw
            sent_total += skip * pending
        elif stalled or (timeout is None and (n >= inp.max_iterations or elapsed >= inp.horizon_s)):
            why = (
                "the guest re-dirties memory as fast as it is copied"
                if stalled
                else f"after {n} passes ({elapsed:.0f} s) it is still not small enough"
            )
            return _result(
                Verdict.WILL_NOT_CONVERGE,
                "none",
                n,
                elapsed,
                sent_total,
                None,
                throttle,
                f"Pre-copy does not converge: {why}, {pending:.1f} MiB "
                f"pending vs. the {threshold:.1f} MiB that fit in the "
                f"{inp.max_downtime_ms:g} ms downtime budget.",
                details,
            )
        if n >= HARD_PASS_LIMIT:
            return _result(
                Verdict.WILL_NOT_CONVERGE,
                "none",
                n,
                elapsed,
                sent_total,
                None,
                throttle,
                f"Pre-copy does not converge within {n} passes.",
                details,
            )
        prev_pending = pending
        to_send = pending


def evaluate(inp: PlanInput) -> Plan:
    """The model's outcome, checked against a guest that dirties ``rate_margin`` more.

    A migration that converges at the measured rate but not with the margin is fragile:
    one burst above the average keeps every pass as large as the last.  It is reported
    as not converging, with the pessimistic plan's figures and the nominal outcome in
    the reason, so recommendations must make it converge with the margin too.
    """
    nominal = _simulate(inp)
    if nominal.verdict is Verdict.WILL_NOT_CONVERGE or inp.rate_margin <= 0:
        return nominal
    pessimistic = _simulate(replace(inp, dirty_scale=inp.dirty_scale * (1.0 + inp.rate_margin)))
    if pessimistic.verdict is not Verdict.WILL_NOT_CONVERGE:
        return nominal
    return replace(
        pessimistic,
        reason=(
            f"Too close to call: at the measured dirty rate pre-copy would just converge "
            f"({nominal.iterations} passes, {nominal.total_time_s:.1f} s), but with "
            f"{inp.rate_margin:.0%} more dirtying it does not. {pessimistic.reason}"
        ),
    )


@dataclass(frozen=True)
class PredictedRange:
    """How sure a prediction is: the total time between `low_s` and `high_s`
    (None: no end, the guest may never converge), around `estimate_s`."""

    estimate_s: float
    low_s: float | None
    high_s: float | None
    too_close: bool  # converges at one end of the dirty-rate spread, not at the other
    verdict_low: Verdict
    verdict_high: Verdict

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate_s": round(self.estimate_s, 3),
            "low_s": None if self.low_s is None else round(self.low_s, 3),
            "high_s": None if self.high_s is None else round(self.high_s, 3),
            "too_close": self.too_close,
            "verdict_low": self.verdict_low.value,
            "verdict_high": self.verdict_high.value,
        }


def dirty_spread(rates: list[float]) -> tuple[float, float]:
    """The p10 and p90 of the dirty-rate readings, as multiples of their mean:
    (1, 1) for a single reading. A reading of 0 (a window between two bursts)
    counts as a very quiet guest, never as none at all."""
    if len(rates) < 2 or statistics.mean(rates) <= 0:
        return 1.0, 1.0
    mean = statistics.mean(rates)
    if len(rates) == 2:
        low, high = min(rates), max(rates)
    else:
        cuts = statistics.quantiles(rates, n=10, method="inclusive")
        low, high = cuts[0], cuts[-1]
    return max(low / mean, MIN_DIRTY_SCALE), high / mean


def predicted_range(
    inp: PlanInput,
    nominal: Plan,
    *,
    dirty: tuple[float, float] = (1.0, 1.0),
    residual: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> PredictedRange:
    """The model at the low and the high end of the dirty-rate spread, each
    times the matching end of the learned residuals (factor, p10, p90):
    low = T(p10 rate) × r10, high = T(p90 rate) × r90, estimate = T × factor.
    A guest that converges at one end and not at the other is too close to call."""
    factor, r_low, r_high = residual

    def at(scale: float) -> Plan:
        return evaluate(replace(inp, dirty_scale=inp.dirty_scale * scale, rate_margin=0.0))

    low_plan, high_plan = at(dirty[0]), at(dirty[1])
    estimate = nominal.total_time_s * factor
    converges_low = low_plan.verdict is not Verdict.WILL_NOT_CONVERGE
    converges_high = high_plan.verdict is not Verdict.WILL_NOT_CONVERGE
    low = min(low_plan.total_time_s * r_low, estimate) if converges_low else None
    high = max(high_plan.total_time_s * r_high, estimate) if converges_high else None
    return PredictedRange(
        estimate_s=estimate,
        low_s=low,
        high_s=high,
        too_close=converges_low != converges_high or (nominal.verdict is Verdict.WILL_NOT_CONVERGE and converges_low),
        verdict_low=low_plan.verdict,
        verdict_high=high_plan.verdict,
    )


def widened_for_compression(inp: PlanInput, spread: PredictedRange, r_high: float) -> PredictedRange:
    """Until a migration from this host measured how fast its compression
    threads go, they may be what sets the pace: the range then reaches the
    migration without any gain from compression (the threads packing no more
    than the link carries), and a guest that converges only with the gain is
    too close to call."""
    slowest = evaluate(replace(inp, compression_ratio=1.0, rate_margin=0.0))
    if slowest.verdict is Verdict.WILL_NOT_CONVERGE:
        return replace(spread, high_s=None, too_close=spread.too_close or spread.high_s is not None)
    if spread.high_s is None:
        return spread
    return replace(spread, high_s=max(spread.high_s, slowest.total_time_s * r_high))


def widened_for_unknown_zero_pages(
    inp: PlanInput, spread: PredictedRange, r_low: float, fraction: float
) -> PredictedRange:
    """Before a VM's first migration nobody knows how much of its memory is
    zero pages, which QEMU sends almost free: the estimate assumes none, and
    the range reaches down to the migration that finds `fraction` of the
    memory zero (a lightly used guest's first migration is often that short).
    Zero pages only shorten the first pass, so the verdict stays."""
    if spread.low_s is None:
        return spread
    emptiest = evaluate(replace(inp, zero_page_fraction=max(inp.zero_page_fraction, fraction), rate_margin=0.0))
    if emptiest.verdict is Verdict.WILL_NOT_CONVERGE:
        return spread
    return replace(spread, low_s=min(spread.low_s, emptiest.total_time_s * r_low))


def _nice_up(x: float) -> float:
    """Round up to two significant digits (1234 -> 1300) so values read well in a UI."""
    if x <= 0:
        return 0
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    v = math.ceil(x / step - 1e-9) * step
    return round(v) if v >= 10 else round(v, 12)


def _smallest(better: Any, lo: float, hi: float, rel: float = 1e-3) -> float | None:
    """Binary search the smallest x in (lo, hi] with better(x); the model is monotone here."""
    if not better(hi):
        return None
    while hi - lo > max(rel * hi, 1e-6):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if better(mid) else (mid, hi)
    return hi


def recommend(inp: PlanInput) -> list[Recommendation]:
    """Parameter changes that improve the verdict, each re-verified with the model."""
    base = evaluate(inp)
    if base.verdict is Verdict.CONVERGES:
        return []
    wire = _wire_bandwidth(inp)
    recs: list[Recommendation] = []

    # When it already converges with help, a fix must not cost a longer pause than the
    # current plan or the operator's own budget (no "pause 30 s instead of post-copy").
    pause_limit_ms = (
        math.inf
        if base.downtime_ms is None
        else max(base.downtime_ms, inp.max_downtime_ms + inp.switchover_overhead_ms) + 1e-6
    )

    def improves(**changes: Any) -> Plan | None:
        p = evaluate(replace(inp, **changes))
        better = _RANK[p.verdict] > _RANK[base.verdict] and p.downtime_ms <= pause_limit_ms
        return p if better else None

    def nice_value(key: str, need: float | None, cap: float) -> tuple[Any, Plan | None]:
        # Round the bisection result to a readable value, preferring the value just
        # below when the bisection overshot an exact boundary; always re-verify.
        if need is None:
            return None, None
        for value in sorted({min(_nice_up(need * 0.998), cap), min(_nice_up(need), cap)}):
            if p := improves(**{key: value}):
                return value, p
        return None, None

    def downtime_text(p: Plan) -> str:
        ms = p.downtime_ms
        return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.0f} ms"

    # 1. Larger downtime budget: the pass sequence does not depend on it, only where it stops.
    hi_ms = min(QEMU_MAX_DOWNTIME_MS, math.ceil(inp.memory_mib / wire * 1000) + 1)
    if hi_ms > inp.max_downtime_ms:
        need = _smallest(lambda ms: improves(max_downtime_ms=ms) is not None, inp.max_downtime_ms, hi_ms)
        value, p = nice_value("max_downtime_ms", need, QEMU_MAX_DOWNTIME_MS)
        if p:
            recs.append(
                Recommendation(
                    "max_downtime_ms",
                    value,
                    (
                        f"Allow a pause of up to {value} ms: the final copy then pauses the guest for "
                        f"about {downtime_text(p)}, device state included."
                    ),
                    {"max_downtime_ms": value},
                )
            )
    # 2. Auto-converge: let QEMU slow the guest until the copy catches up.
    if not inp.auto_converge and (p := improves(auto_converge=True)):
        recs.append(
            Recommendation(
                "auto_converge",
                True,
                (
                    f"Enable auto-converge: QEMU slows the guest's CPUs (to {p.throttle_pct_final} % "
                    f"here) so it writes memory more slowly and the copy catches up."
                ),
                {"auto_converge": True},
            )
        )
    # 3. More bandwidth.
    hi_bw = inp.bandwidth_mib_s * 2
    while hi_bw < inp.bandwidth_mib_s * 4096 and not improves(bandwidth_mib_s=hi_bw):
        hi_bw *= 2
    need = _smallest(lambda bw: improves(bandwidth_mib_s=bw) is not None, inp.bandwidth_mib_s, hi_bw)
    value, p = nice_value("bandwidth_mib_s", need, math.inf)
    if p:
        what = "the bandwidth cap" if inp.bandwidth_is_cap else "the link throughput"
        recs.append(
            Recommendation(
                "bandwidth_mib_s",
                value,
                (
                    f"Raise {what} to {value} MiB/s so copying outruns the guest's memory writes "
                    f"(pause about {downtime_text(p)})."
                ),
                {"bandwidth_mib_s": value},
            )
        )
    # 4. Compression (zstd over multifd) when none is used.
    if inp.compression is None and (p := improves(compression="zstd")):
        recs.append(
            Recommendation(
                "compression",
                "zstd",
                (
                    f"Compress the stream with zstd: it moves about {COMPRESSION_MULTIPLIER['zstd']}x "
                    f"more memory per second of link, at the cost of CPU on both hosts."
                ),
                {"compression": "zstd"},
            )
        )
    # 5. Post-copy: always finishes, short pause, but the VM depends on the network meanwhile.
    if not inp.postcopy and (p := improves(postcopy=True)):
        recs.append(
            Recommendation(
                "postcopy",
                True,
                (
                    f"Use post-copy: after one full copy the VM resumes on the destination within "
                    f"about {downtime_text(p)} and fetches the rest on demand; a network failure in "
                    f"that phase loses the VM."
                ),
                {"postcopy": True},
            )
        )
    # 6. Timeout that suspends the guest: always finishes, with a long pause.
    if inp.timeout_action not in (None, "suspend") or inp.timeout_s is None:
        t = inp.timeout_s or _nice_up(inp.setup_s + 2 * inp.memory_mib / wire)
        changes = {"timeout_s": t, "timeout_action": "suspend"}
        if p := improves(**changes):
            recs.append(
                Recommendation(
                    "timeout_action",
                    "suspend",
                    (
                        f"Pause the guest if the migration runs longer than {t:g} s: it then always "
                        f"finishes, but the guest is paused for about {downtime_text(p)}."
                    ),
                    changes,
                )
            )
    return recs


def plan(inp: PlanInput) -> Plan:
    """Predict the migration; recommendations are filled unless it plainly converges."""
    result = evaluate(inp)
    if result.verdict is Verdict.CONVERGES:
        return result
    return replace(result, recommendations=tuple(recommend(inp)))


def learned_bandwidth(throughputs_mib_s: list[float], window: int = 5) -> float | None:
    """Median of the last ``window`` valid throughput samples: robust to one-off spikes."""
    valid = [float(x) for x in throughputs_mib_s if x is not None and math.isfinite(x) and x > 0][-window:]
    return statistics.median(valid) if valid else None
