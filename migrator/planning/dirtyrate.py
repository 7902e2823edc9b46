"""Dirty-rate measurement (R8): an RQ job measures a VM's dirty page rate
with QEMU's page sampling, window after window for a chosen duration, stores
each reading and streams it to the VM page's chart."""

from __future__ import annotations

import time
import uuid as uuidlib

from django import forms

from hosts import gateway
from hosts.connection import connect_uri
from hosts.models import VirtualMachine

from .. import live
from ..models import DirtyRateMeasurement, Migration
from ..roles import OPERATORS, has_role

MAX_WINDOW_S = 60
MAX_DURATION_S = 600


def group_name(vm_uuid: str) -> str:
    return f"dirtyrate-{vm_uuid}"


class DirtyRateForm(forms.Form):
    window_s = forms.IntegerField(
        min_value=1,
        max_value=MAX_WINDOW_S,
        initial=1,
        label="Window (s)",
        help_text="Each reading samples pages over this many seconds (calc-time).",
    )
    duration_s = forms.IntegerField(
        min_value=1,
        max_value=MAX_DURATION_S,
        initial=24,
        label="Duration (s)",
        help_text="Keep measuring, window after window, for this long. Page sampling reads only a few hundred "
        "pages, so one reading is rough: three rounds of the curve (about 24 s at a 1 s window) average it out.",
    )
    curve = forms.BooleanField(
        required=False,
        initial=True,
        label="Measure a curve",
        help_text="Alternate 1×, 2× and 4× the window: guests that rewrite the same pages dirty less per second "
        "over longer windows, and the prediction uses that curve.",
    )

    def clean(self):
        cleaned = super().clean()
        window, duration = cleaned.get("window_s"), cleaned.get("duration_s")
        if window and duration and duration < window:
            self.add_error("duration_s", "The duration must be at least one window long.")
        return cleaned


def refusal(vm: VirtualMachine) -> str:
    """Why a measurement cannot start now, or ''."""
    if not vm.running:
        return f"{vm.name} is {vm.state}; only a running VM dirties memory."
    active = Migration.objects.active().for_vm(vm.uuid).first()
    if active is not None:
        return (
            f"{vm.name} is being migrated (migration #{active.pk}); sampling would conflict with it. "
            "Measure after the migration ends."
        )
    return ""


def curve_windows(window_s: int) -> list[int]:
    """Windows of 1×, 2× and 4× the base: a guest that rewrites the same pages
    shows a lower rate over longer windows, and a migration iteration lasts
    seconds, so the planner needs the curve, not one point."""
    return [window_s, 2 * window_s, 4 * window_s]


def measure_series(
    vm_id: int, window_s: int, duration_s: int, series: str, username: str = "", curve: bool = False
) -> int:
    """The job body: readings until `duration_s` has passed. Returns how many."""
    vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
    windows = curve_windows(window_s) if curve else [window_s]
    deadline = time.monotonic() + duration_s
    count = 0
    # At least one reading per window, so a curve is always complete.
    while count < len(windows) or time.monotonic() + windows[count % len(windows)] <= deadline:
        if Migration.objects.active().for_vm(vm.uuid).exists():
            break
        window_s = windows[count % len(windows)]
        reading = gateway.dirty_rate(connect_uri(vm.host), vm.uuid, window_s)
        row = DirtyRateMeasurement.objects.create(
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            host=vm.host,
            host_name=vm.host.name,
            series=series,
            window_s=reading.window_s or window_s,
            mode=reading.mode,
            dirty_rate_mib_s=reading.dirty_rate_mib_s,
            requested_by_username=username,
        )
        live.send(group_name(vm.uuid), {"type": "dirtyrate.sample", "sample": row.as_dict()})
        count += 1
    live.send(group_name(vm.uuid), {"type": "dirtyrate.done", "series": series, "count": count})
    return count


def start_measurement(vm: VirtualMachine, window_s: int, duration_s: int, username: str, curve: bool = False) -> str:
    import django_rq

    from ..jobs import QUEUE

    series = str(uuidlib.uuid4())
    django_rq.get_queue(QUEUE).enqueue(
        measure_series,
        vm.pk,
        window_s,
        duration_s,
        series,
        username,
        curve,
        job_timeout=duration_s + 4 * window_s + 120,
        description=f"dirty rate of {vm.name}",
    )
    return series


def latest(vm_uuid: str) -> DirtyRateMeasurement | None:
    return DirtyRateMeasurement.objects.filter(vm_uuid=vm_uuid).first()


def vm_dirty_rate_context(request, vm: VirtualMachine) -> dict:
    history = list(DirtyRateMeasurement.objects.filter(vm_uuid=vm.uuid)[:200])
    return {
        "dirty_rate_panel": "migrator/_dirty_rate.html",
        "dirty_rate_form": DirtyRateForm() if has_role(request.user, OPERATORS) else None,
        "dirty_rate_latest": history[0] if history else None,
        "dirty_rate_history": history[:20],
        "dirty_rate_samples": [m.as_dict() for m in reversed(history)],
        "dirty_rate_refusal": refusal(vm),
    }
