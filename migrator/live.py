"""Publishes migration progress to the channel layer.

Progress flows one way: libvirt job stats → job → sample row → channel group
→ consumer → browser. A channel layer that is down must never fail a
migration, so publishing errors are logged and dropped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.dispatch import receiver

from .actions import available_actions
from .models import MigrationState, state_changed
from .parameters import MigrationParameters
from .planning import planner

log = logging.getLogger(__name__)
LIST_GROUP = "migrations"
MIB = 1024 * 1024


def disk_copy_text(migration) -> str:
    """'64.0 MiB of 64.0 MiB', '—' while a disk copy is not sized yet, '' without one."""
    copy = migration.disk_copy
    if copy is None:
        return "—" if migration.copies_disks else ""
    copied, total = copy
    return f"{copied / MIB:.1f} MiB of {total / MIB:.1f} MiB"


def data_text(migration) -> str:
    """'78.5 MiB / 256.0 MiB': data sent against the VM's memory."""
    sent = migration.data_processed_bytes
    return f"{f'{sent / MIB:.1f} MiB' if sent else '—'} / {migration.memory_bytes / MIB:.1f} MiB"


def migration_state(migration) -> dict[str, Any]:
    """The state part of the JSON shape the page and the socket share."""
    disk = migration.disk_copy
    return {
        "id": migration.pk,
        "state": migration.state,
        "state_display": migration.get_state_display(),
        "badge": migration.badge,
        "active": migration.is_active,
        "in_flight": migration.in_flight,
        "postcopy_started": migration.postcopy_started_at is not None,
        "available_actions": [str(kind) for kind in available_actions(migration)],
        "actions": [action.as_dict() for action in migration.actions.all()],
        "vm_name": migration.vm_name,
        "source_name": migration.source_name,
        "destination_name": migration.destination_name,
        "memory_bytes": migration.memory_bytes,
        "storage_class": migration.storage_class,
        "started_at": migration.started_at.isoformat() if migration.started_at else None,
        "finished_at": migration.finished_at.isoformat() if migration.finished_at else None,
        "total_time_ms": migration.total_time_ms,
        "downtime_ms": migration.downtime_ms,
        "data_processed_bytes": migration.data_processed_bytes,
        "data_text": data_text(migration),
        "copies_disks": migration.copies_disks,
        "disk_copied_bytes": disk[0] if disk else None,
        "disk_total_bytes": disk[1] if disk else None,
        "disk_copy_text": disk_copy_text(migration),
        "iterations": migration.iterations,
        "avg_throughput_mib_s": migration.avg_throughput_mib_s,
        "error_message": migration.error_message,
        "libvirt_message": (migration.error_details or {}).get("libvirt_message", ""),
        "outcome_note": migration.outcome_note,
        "vm_location": migration.vm_location,
        "waiting": migration.state == "waiting",
        "wait_reason": migration.wait_reason,
        "not_before": migration.not_before.isoformat() if migration.not_before else None,
        "created_at": migration.created_at.isoformat() if migration.created_at else None,
        "last_sample": migration.last_sample or None,
        "prediction": migration.prediction or None,
        "convergence_warning": convergence_warning(migration),
        "convergence_advice": convergence_advice(migration),
        "url": migration.get_absolute_url(),
    }


def send(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # noqa: BLE001 - progress display must not break a migration
        log.warning("could not publish to %s", group, exc_info=True)


CONVERGENCE_WINDOW_MS = 10_000
CONVERGENCE_MIN_SAMPLES = 5


def _recent_window(migration) -> list | None:
    """The samples of the last ~10 s past the first full pass, newest first."""
    recent = list(migration.samples.filter(iteration__gte=2).order_by("-elapsed_ms", "-pk")[:100])
    if not recent:
        return None
    last = recent[0]
    window = [s for s in recent if s.elapsed_ms >= last.elapsed_ms - CONVERGENCE_WINDOW_MS]
    return window if len(window) >= CONVERGENCE_MIN_SAMPLES else None


def _observed(window) -> tuple[float, float, bool]:
    last, first = window[0], window[-1]
    dirty = sum(s.dirty_rate_mib_s for s in window) / len(window)
    sent = sum(s.throughput_mib_s for s in window) / len(window)
    not_shrinking = last.data_remaining_bytes >= first.data_remaining_bytes * 0.95
    return dirty, sent, not_shrinking


def convergence_warning(migration) -> str:
    """Plain words when pre-copy is not converging: over the last ~10 s past
    the first full pass, the guest dirtied memory at least as fast as it was
    sent, or the remaining data did not shrink. Empty otherwise."""
    if migration.state != MigrationState.RUNNING or migration.postcopy_started_at is not None:
        return ""
    window = _recent_window(migration)
    if window is None:
        return ""
    dirty, sent, not_shrinking = _observed(window)
    if dirty < sent and not not_shrinking:
        return ""
    return (
        f"Not converging. The guest dirties memory at {dirty:.1f} MiB/s while {sent:.1f} MiB/s is sent"
        + (", and the remaining data is not shrinking" if not_shrinking else "")
        + "."
    )


def convergence_advice(migration) -> dict[str, Any] | None:
    """The live action the planner recommends for the rates observed now
    (a not-converging migration only): {kind, value, label, why}."""
    if not convergence_warning(migration):
        return None
    window = _recent_window(migration)
    dirty, sent, _ = _observed(window)
    params = MigrationParameters.from_record(migration.parameters)
    remaining_mib = window[0].data_remaining_bytes / MIB
    try:
        inp = params.planner_input(
            memory_mib=max(remaining_mib, 1.0),
            dirty_rate_mib_s=dirty,
            bandwidth_mib_s=float(params.bandwidth_mib_s or max(sent, 1.0)),
            bandwidth_is_cap=bool(params.bandwidth_mib_s),
        )
        recommendations = planner.recommend(inp)
    except ValueError:
        recommendations = []
    allowed = available_actions(migration)
    for rec in recommendations:
        if rec.parameter == "bandwidth_mib_s" and "bandwidth" in allowed:
            return _advice("bandwidth", int(rec.value), f"Raise the bandwidth limit to {int(rec.value)} MiB/s", rec)
        if rec.parameter == "max_downtime_ms" and "max_downtime" in allowed:
            return _advice("max_downtime", int(rec.value), f"Raise the max downtime to {int(rec.value)} ms", rec)
        if rec.parameter == "postcopy" and "postcopy" in allowed:
            return _advice("postcopy", None, "Switch to post-copy now", rec)
    if "postcopy" in allowed:
        return {
            "kind": "postcopy",
            "value": None,
            "label": "Switch to post-copy now",
            "why": "The VM moves to the destination at once and fetches the rest of its memory from there.",
        }
    pause_ms = remaining_mib / max(sent, 0.1) * 1000
    return {
        "kind": "force_complete",
        "value": None,
        "label": "Force complete",
        "why": f"Pauses the VM so the last {remaining_mib:.0f} MiB go across: "
        f"about {pause_ms / 1000:.1f} s of downtime at {sent:.1f} MiB/s.",
    }


def _advice(kind: str, value: int | None, label: str, rec) -> dict[str, Any]:
    return {"kind": kind, "value": value, "label": label, "why": rec.explanation}


def publish_sample(migration, sample: dict[str, Any], read_at: float | None = None) -> None:
    # read_at (epoch seconds) lets the benchmark measure sample→browser latency.
    payload = {
        "type": "migration.sample",
        "id": migration.pk,
        "sample": sample,
        "read_at": read_at or time.time(),
        "convergence_warning": convergence_warning(migration),
        "convergence_advice": convergence_advice(migration),
    }
    send(migration.group_name, payload)
    send(LIST_GROUP, payload)


def publish_state(migration) -> None:
    payload = {"type": "migration.state", "id": migration.pk, "migration": migration_state(migration)}
    send(migration.group_name, payload)
    send(LIST_GROUP, payload)


@receiver(state_changed)
def _publish_state_change(sender, migration, **kwargs) -> None:
    publish_state(migration)
