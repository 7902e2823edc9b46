"""Feeds the planner what the dashboard knows: the VM's memory, its latest
dirty-rate series, the bandwidth (the cap, or the throughput learned from
earlier uncapped migrations between the same two hosts) and the chosen
parameters."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Any

from hosts.models import Host, VirtualMachine

from ..models import DirtyRateMeasurement, Migration, MigrationState
from ..parameters import MigrationParameters
from . import learning, planner

# The learned link speed needs this many finished uncapped migrations.
LEARN_MIN_SAMPLES = 1
# Each learned figure is taken over this many of the newest matching migrations.
LEARN_WINDOW = 20
# Never assume a guest is emptier than this: its next migration may find it busier.
MAX_ZERO_PAGE_FRACTION = 0.95
MIB = 2**20


def learned_throughput_mib_s(source_name: str, destination_name: str) -> float | None:
    """Average throughput of recent uncapped migrations between the two hosts.
    A capped migration says nothing about the link, so it is left out."""
    rows = Migration.objects.filter(
        state=MigrationState.SUCCEEDED,
        source_name=source_name,
        destination_name=destination_name,
        avg_throughput_mib_s__isnull=False,
    ).order_by("-finished_at")[:LEARN_WINDOW]
    speeds = []
    for m in rows:
        if m.parameters.get("bandwidth_mib_s") or m.parameters.get("disks"):
            continue
        # Sampled throughput while pages flowed; the average over the whole job
        # also counts set-up and zero pages, which say nothing about the link.
        sampled = [s for s in m.samples.values_list("throughput_mib_s", flat=True) if s > 0]
        speed = statistics.median(sampled) if sampled else m.avg_throughput_mib_s
        if speed:
            speeds.append(speed)
    if len(speeds) < LEARN_MIN_SAMPLES:
        return None
    return planner.learned_bandwidth(speeds)


def learned_compression(source_name: str, method: str) -> dict[str, Any] | None:
    """What earlier migrations from the same host with the same stream
    compressor measured: `ratio`, page data per wire byte (the page data of
    each record's plan, or at least its first pass, over the wire bytes libvirt
    counted), and `compress_mib_s`, the MiB of guest pages (zero pages too:
    they pass through the threads) per second of the compression threads' own
    time: what the copy took beyond sending its wire bytes at the cap, or at
    the link's learned speed (planner.page_rate adds the two back). None when
    no such migration finished."""
    rows = Migration.objects.filter(
        state=MigrationState.SUCCEEDED, source_name=source_name, parameters__compression=method
    ).order_by("-finished_at")[:LEARN_WINDOW]
    ratios, rates = [], []
    links: dict[str, float | None] = {}
    for m in rows:
        stats = m.final_stats or {}
        wire_mib = (stats.get("memory_processed") or 0) / MIB
        page = stats.get("memory_page_size") or 4096
        memory_mib = (stats.get("memory_total") or 0) / MIB
        first_pass_mib = memory_mib - (stats.get("memory_constant") or 0) * page / MIB
        page_mib = max(float(((m.prediction or {}).get("plan") or {}).get("data_sent_mib") or 0), first_pass_mib)
        if wire_mib <= 0 or page_mib <= 0:
            continue
        ratios.append(min(10.0, max(1.0, page_mib / wire_mib)))
        if stats.get("disk_total"):
            continue  # the copy's time holds the disks' too
        elapsed_ms, setup_ms, pause_ms = (stats.get(k) or 0 for k in ("time_elapsed", "setup_time", "downtime"))
        move_s = (elapsed_ms - setup_ms - pause_ms) / 1000
        pace = m.parameters.get("bandwidth_mib_s")
        if not pace:
            if m.destination_name not in links:
                links[m.destination_name] = learned_throughput_mib_s(m.source_name, m.destination_name)
            pace = links[m.destination_name]
        compress_s = move_s - wire_mib / pace if pace else 0.0
        if compress_s > 0.05 * move_s:
            # Every page of the first pass went through the threads, then the later passes' pages.
            rates.append((memory_mib + max(0.0, page_mib - first_pass_mib)) / compress_s)
    if not ratios:
        return None
    return {
        "method": method,
        "samples": len(ratios),
        "ratio": round(statistics.median(ratios), 3),
        "compress_mib_s": round(statistics.median(rates), 2) if rates else None,
    }


def learned_switchover_ms(source_name: str, destination_name: str) -> float | None:
    """What switching over costs between the two hosts beyond copying the last
    pages: the shortest recent pause. Every pause is that fixed cost (device
    state, stopping and starting the guest) plus the final copy, so the
    shortest one bounds the fixed cost from above; a median would count the
    tens of MiB an uncapped migration copies while the guest is paused."""
    downtimes = list(
        Migration.objects.filter(
            state=MigrationState.SUCCEEDED,
            source_name=source_name,
            destination_name=destination_name,
            downtime_ms__gt=0,
        )
        .order_by("-finished_at")
        .values_list("downtime_ms", flat=True)[:LEARN_WINDOW]
    )
    return float(min(downtimes)) if downtimes else None


def learned_zero_page_fraction(vm_uuid: str) -> float | None:
    """Share of the VM's memory that its last migration found to be zero
    pages, or None when no migration of it measured them. QEMU sends zero
    pages as a few header bytes, so a mostly idle guest's first pass is far
    shorter than its memory size suggests."""
    for stats in (
        Migration.objects.filter(vm_uuid=vm_uuid, state=MigrationState.SUCCEEDED)
        .order_by("-finished_at")
        .values_list("final_stats", flat=True)[:5]
    ):
        total, zero_pages = stats.get("memory_total"), stats.get("memory_constant")
        if total and zero_pages is not None:
            page = stats.get("memory_page_size") or 4096
            return min(MAX_ZERO_PAGE_FRACTION, max(0.0, zero_pages * page / total))
    return None


def measured_input(
    vm: VirtualMachine, destination: Host, parameters: MigrationParameters | dict[str, Any]
) -> dict[str, Any]:
    """What the planner needs besides the parameters: {"available": False,
    "reason": ...} when the dashboard cannot predict, else the measurements
    ("measured": PlanInput keywords, "tuning": what replaces PlanInput's
    defaults) and what the prediction says about them."""
    parameters = MigrationParameters.from_record(parameters)
    series = DirtyRateMeasurement.latest_series(vm.uuid)
    if not series:
        return {
            "available": False,
            "reason": "Measure the VM's dirty page rate first (VM page → Dirty page rate) to get a prediction.",
        }
    dirty = statistics.mean(m.dirty_rate_mib_s for m in series)
    # Every reading goes to the planner, which averages repeated windows and fits the curve.
    readings = [(m.window_s, m.dirty_rate_mib_s) for m in series]
    curve = readings if len({w for w, _r in readings}) > 1 else []
    cap = parameters.bandwidth_mib_s
    learned = learned_throughput_mib_s(vm.host.name, destination.name)
    if cap:
        bandwidth, source = float(cap), "the bandwidth limit"
        if learned:
            bandwidth = min(bandwidth, learned)
            source = "the bandwidth limit" if cap <= learned else "the measured link speed (below the limit)"
    elif learned:
        bandwidth, source = learned, "the throughput of earlier migrations between these hosts"
    else:
        return {
            "available": False,
            "reason": "No bandwidth limit is set and no earlier migration between these hosts measured the "
            "link: set a bandwidth limit to get a prediction, or migrate once to learn the link.",
            "dirty_rate_mib_s": dirty,
        }
    disk_mib, disk_unwritten_mib = copied_disk_mib(vm, parameters)
    # Unknown before the VM's first migration: assume every page holds data.
    learned_zero = learned_zero_page_fraction(vm.uuid)
    zero = learned_zero or 0.0
    overhead_ms = learned_switchover_ms(vm.host.name, destination.name)
    tuning: dict[str, Any] = {"final_copy_bandwidth_mib_s": learned}
    if overhead_ms is not None:
        tuning["switchover_overhead_ms"] = overhead_ms
    compression = None
    if parameters.compression in planner.STREAM_COMPRESSORS:
        compression = learned_compression(vm.host.name, parameters.compression) or {
            "method": parameters.compression,
            "samples": 0,
            "ratio": None,
            "compress_mib_s": None,
        }
        tuning["compression_ratio"] = compression["ratio"]
        tuning["compress_mib_s"] = compression["compress_mib_s"]
    return {
        "available": True,
        "series": series,
        "measured": {
            "memory_mib": vm.memory_kib / 1024,
            "disk_mib": disk_mib,
            "disk_unwritten_mib": disk_unwritten_mib,
            "dirty_rate_mib_s": dirty,
            "dirty_rate_curve": tuple(curve),
            "bandwidth_mib_s": bandwidth,
            "bandwidth_is_cap": bool(cap),
            "zero_page_fraction": zero,
        },
        "tuning": tuning,
        "dirty_rate_mib_s": dirty,
        "bandwidth_source": source,
        "zero_pages_known": learned_zero is not None,
        "compression": compression,
    }


def copied_disk_mib(vm: VirtualMachine, parameters: MigrationParameters) -> tuple[float, float]:
    """The disks the migration copies: the data each image holds (its
    allocation; its size when the inventory does not say), and the rest of
    its size, never written."""
    chosen = set(parameters.disks)
    data = unwritten = 0
    for d in vm.disks:
        if d.get("target") not in chosen:
            continue
        size = int(d.get("capacity_bytes") or 0)
        held = int(d.get("allocation_bytes") or size)
        data += held
        unwritten += max(0, size - held)
    return data / MIB, unwritten / MIB


def planner_input_for(parameters: MigrationParameters, measured: dict[str, Any]) -> planner.PlanInput:
    """The planner's input for `parameters`, from measured_input's answer."""
    return replace(parameters.planner_input(**measured["measured"]), **measured["tuning"])


def predict_for(
    vm: VirtualMachine, destination: Host, parameters: MigrationParameters | dict[str, Any]
) -> dict[str, Any]:
    """The prediction stored on the migration and shown on the review step."""
    parameters = MigrationParameters.from_record(parameters)
    measured = measured_input(vm, destination, parameters)
    if not measured["available"]:
        return measured
    series = measured["series"]
    inp = planner_input_for(parameters, measured)
    result = planner.plan(inp)
    # What earlier migrations of this kind taught: a correction and a spread.
    lesson = learning.learned(vm.host.name, destination.name, learning.option_key(parameters))
    spread = planner.predicted_range(
        inp,
        result,
        dirty=planner.dirty_spread([m.dirty_rate_mib_s for m in series]),
        residual=(lesson.factor, lesson.low, lesson.high),
    )
    if inp.compression in planner.STREAM_COMPRESSORS and inp.compress_mib_s is None:
        spread = planner.widened_for_compression(inp, spread, lesson.high)
    if not measured["zero_pages_known"]:
        spread = planner.widened_for_unknown_zero_pages(inp, spread, lesson.low, MAX_ZERO_PAGE_FRACTION)
    plan = result.as_dict()
    model_total_s = plan["total_time_s"]
    if result.verdict is not planner.Verdict.WILL_NOT_CONVERGE:
        plan["total_time_s"] = round(spread.estimate_s, 3)
    return {
        "available": True,
        "dirty_rate_mib_s": round(measured["dirty_rate_mib_s"], 3),
        "measured_at": series[-1].measured_at.isoformat(),
        "bandwidth_mib_s": round(inp.bandwidth_mib_s, 2),
        "bandwidth_source": measured["bandwidth_source"],
        "zero_page_fraction": round(inp.zero_page_fraction, 3),
        "disk_mib": round(inp.disk_mib, 1),
        "disk_unwritten_mib": round(inp.disk_unwritten_mib, 1) if inp.bandwidth_is_cap else 0.0,
        "disk_copy_s": round(planner.disk_copy_s(inp), 1),
        "zero_pages_known": measured["zero_pages_known"],
        "compression": measured["compression"],
        "plan": plan,
        # The model's own figure: what the next migration's lesson is measured against.
        "model_total_time_s": model_total_s,
        "model_version": planner.MODEL_VERSION,
        "range": spread.as_dict(),
        "learned": lesson.as_dict(),
        "form_changes": [form_changes(r, result) for r in result.recommendations],
    }


def form_changes(rec: planner.Recommendation, result: planner.Plan) -> dict[str, Any]:
    """A recommendation in the wizard form's terms, so it can be applied."""
    changes: dict[str, Any] = {}
    for key, value in rec.changes.items():
        if key in ("max_downtime_ms", "bandwidth_mib_s"):
            changes[key] = int(math.ceil(value))
        elif key == "auto_converge":
            changes[key] = bool(value)
        elif key == "compression":
            changes[key] = value or ""
        elif key == "parallel_connections":
            changes[key] = int(value)
        elif key == "timeout_s":
            changes[key] = int(math.ceil(value)) if value else ""
        elif key == "timeout_action":
            changes[key] = value or "suspend"
        elif key == "postcopy" and value:
            # The wizard switches to post-copy through the timeout: after the first pass.
            first_pass_s = result.iterations_detail[0].duration_s if result.iterations_detail else 1
            changes["timeout_s"] = max(1, int(math.ceil(first_pass_s)))
            changes["timeout_action"] = "postcopy"
    return {"parameter": rec.parameter, "value": rec.value, "explanation": rec.explanation, "changes": changes}
