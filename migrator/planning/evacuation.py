"""The evacuation planner: where each running VM of a host goes, in which
order, and how long the whole move takes under the migration limits.

A plan is a dry run built from the stored inventory and the database alone
(no libvirt call), so it answers at once for a host of a hundred VMs and
fifty possible destinations; the job re-checks each migration against the
live hosts just before it runs.

For each VM, every destination is judged by the pre-checks the wizard runs,
in their inventory-only form (`migrator.prechecks.run_inventory_prechecks`:
CPU, memory, networks, stored VMs, disks, TLS readiness), with the memory
already promised to earlier steps of the same plan counted. Among the hosts
that pass, the VM goes where the plan finishes it first: its predicted
migration time (the planner's model, fed like `prediction.predict_for` with
the VM's latest dirty-rate reading, the learned link speed, switch-over cost,
zero pages and correction factor, or stated defaults where nothing is known)
plus any wait for a slot there. Near-ties go to the shorter downtime, then
to the host with fewer VMs of this plan and more memory left, so identical
hosts share the load.

Order: longest predicted migration first. With k slots out of the source
(its outgoing limit, or the site's total when lower), starting the long
migrations first keeps one long migration from running alone at the end
(longest-processing-time-first list scheduling, within 4/3 of the shortest
possible total); it also places the biggest VMs while destinations still
have the most room (first-fit decreasing), so fewer VMs end up without a
host. The slots are then simulated in that order, first-come as the queue
starts them: a step starts when the source, its destination and the site
each have a slot free.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hosts.models import Host, VirtualMachine

from .. import policies
from ..models import SLOT_STATES, DirtyRateMeasurement, Migration, MigrationState
from ..parameters import MigrationParameters
from ..prechecks import Report, StoredInventory, run_inventory_prechecks
from ..prechecks.inventory import check_memory
from . import learning, planner
from .prediction import learned_switchover_ms, learned_throughput_mib_s, learned_zero_page_fraction, predict_for

# Without a dirty-rate reading: a moderately busy guest.
DEFAULT_DIRTY_RATE_MIB_S = 10.0
# Without a bandwidth limit or a learned link speed: 1 Gbit/s Ethernet's payload rate.
DEFAULT_BANDWIDTH_MIB_S = 110.0
# Destinations whose predicted finish is within this share of the best one are near-ties.
NEAR_TIE = 0.05
# Other passing destinations named in a step's reasons.
ALSO_POSSIBLE_SHOWN = 5


# ------------------------------------------------------------ the plan


@dataclass
class Step:
    """One migration of the plan: which VM goes where, when it starts
    (seconds after the plan starts) and what it is predicted to take."""

    vm_id: int
    vm_uuid: str
    vm_name: str
    memory_mib: int
    destination_id: int
    destination_name: str
    predicted_s: float
    predicted_downtime_ms: float | None
    start_offset_s: float
    # Why this destination, what else was possible, and why other hosts were refused.
    reasons: list[str] = field(default_factory=list)
    # What the prediction rests on (readings, link speed, assumed defaults).
    basis: list[str] = field(default_factory=list)
    # What the batch queues: the record's parameters, the inventory report, the prediction.
    parameters: dict[str, Any] = field(default_factory=dict)
    report: list[dict[str, Any]] = field(default_factory=list)
    prediction: dict[str, Any] = field(default_factory=dict)

    @property
    def end_offset_s(self) -> float:
        return self.start_offset_s + self.predicted_s


@dataclass
class Unmovable:
    """A VM that stays on the source, and why (one reason per destination
    when no destination passes; `skipped` when it is not running)."""

    vm_id: int
    vm_uuid: str
    vm_name: str
    state: str
    reasons: list[str] = field(default_factory=list)
    skipped: bool = False


@dataclass
class Plan:
    source_id: int | None
    source_name: str
    policy: str
    created_at: datetime
    steps: list[Step] = field(default_factory=list)
    unmovable: list[Unmovable] = field(default_factory=list)
    predicted_total_s: float = 0.0
    # The limits the slots were simulated under.
    limits: dict[str, Any] = field(default_factory=dict)
    # What each migration holds its slot beyond its copy, and what the
    # simulation started from (migrations already running), in words.
    slot_overhead_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        created = data.get("created_at")
        return cls(
            source_id=data.get("source_id"),
            source_name=data.get("source_name", ""),
            policy=data.get("policy", ""),
            created_at=datetime.fromisoformat(created) if created else timezone.now(),
            steps=[_from(Step, s) for s in data.get("steps", [])],
            unmovable=[_from(Unmovable, u) for u in data.get("unmovable", [])],
            predicted_total_s=data.get("predicted_total_s") or 0.0,
            limits=dict(data.get("limits") or {}),
            slot_overhead_s=data.get("slot_overhead_s") or 0.0,
            notes=list(data.get("notes") or []),
        )


def _from(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# ------------------------------------------------------------ slots


class Slots:
    """The queue's limits over time for migrations out of one source, started
    first-come in the plan's order: a migration starts once the source, its
    destination and the site each have a slot free, never before the
    migration queued ahead of it."""

    def __init__(self, outgoing: int, total: int, incoming: dict[Any, int]):
        self.sending = max(0, min(outgoing, total))
        self.incoming = incoming
        self.running: list[tuple[float, Any]] = []  # (end, destination) out of this source
        self.arriving: list[tuple[float, Any]] = []  # (end, destination) from other sources
        self.last_start = 0.0

    def busy(self, destination: Any, end: float, *, from_source: bool) -> None:
        """A migration already running when the plan starts, until `end`."""
        (self.running if from_source else self.arriving).append((end, destination))

    def earliest(self, destination: Any) -> float:
        t = self.last_start
        ends = sorted(end for end, _ in self.running if end > t)
        start = max(t, _freed(ends, self.sending))
        into = sorted(end for end, d in [*self.running, *self.arriving] if end > t and d == destination)
        return max(start, _freed(into, self.incoming.get(destination, settings.MIGRATION_MAX_INCOMING)))

    def take(self, destination: Any, start: float, duration_s: float) -> None:
        self.last_start = start
        self.running.append((start + duration_s, destination))


def _freed(ends: list[float], limit: int) -> float:
    """When fewer than `limit` of the migrations ending at `ends` still run."""
    if len(ends) < limit:
        return 0.0
    if limit <= 0:
        return float("inf")
    return ends[len(ends) - limit]


def simulate(
    steps: list[tuple[Any, float]], *, outgoing: int, total: int, incoming: dict[Any, int] | int
) -> tuple[list[float], float]:
    """Start offsets of (destination, duration) steps from one source, in
    order, and the time the last one ends."""
    if isinstance(incoming, int):
        incoming = defaultdict(lambda: incoming)
    slots = Slots(outgoing, total, incoming)
    starts = []
    for destination, duration in steps:
        start = slots.earliest(destination)
        slots.take(destination, start, duration)
        starts.append(start)
    return starts, max((s + d for s, (_, d) in zip(starts, steps, strict=True)), default=0.0)


# ------------------------------------------------------------ predictions


@dataclass(frozen=True)
class Prediction:
    total_s: float
    downtime_ms: float | None
    verdict: planner.Verdict
    reason: str
    basis: tuple[str, ...]
    inp: planner.PlanInput


class _Predictor:
    """predict_for's inputs, each read once: per VM its latest dirty-rate
    series and zero pages, per destination the learned link speed,
    switch-over cost and correction factor (a destination this source never
    migrated to shares what all host pairs taught). The model runs once per
    distinct input."""

    def __init__(self, source: Host, vms: list[VirtualMachine]):
        self.source = source
        uuids = [vm.uuid for vm in vms]
        latest: dict[str, str] = {}
        rows = DirtyRateMeasurement.objects.filter(vm_uuid__in=uuids).values_list("vm_uuid", "series")
        for uuid, series in rows.order_by("-measured_at", "-pk"):
            latest.setdefault(uuid, series)
        self.series: dict[str, list[DirtyRateMeasurement]] = defaultdict(list)
        for m in DirtyRateMeasurement.objects.filter(series__in=set(latest.values())).order_by("measured_at"):
            if latest.get(m.vm_uuid) == m.series:
                self.series[m.vm_uuid].append(m)
        done = Migration.objects.filter(state=MigrationState.SUCCEEDED)
        self.migrated = set(done.filter(vm_uuid__in=uuids).values_list("vm_uuid", flat=True))
        self.learned_pairs = set(done.filter(source_name=source.name).values_list("destination_name", flat=True))
        self._link: dict[str, tuple[float | None, float | None]] = {}
        self._lessons: dict[tuple[str, str], learning.Learned] = {}
        self._zero: dict[str, float | None] = {}
        self._plans: dict[planner.PlanInput, planner.Plan] = {}
        self._advice: dict[planner.PlanInput, str] = {}
        self._predictions: dict[tuple[int, str], Prediction] = {}

    def link(self, destination: Host) -> tuple[float | None, float | None]:
        if destination.name not in self.learned_pairs:
            return None, None
        if destination.name not in self._link:
            self._link[destination.name] = (
                learned_throughput_mib_s(self.source.name, destination.name),
                learned_switchover_ms(self.source.name, destination.name),
            )
        return self._link[destination.name]

    def lesson(self, destination: Host, key: str) -> learning.Learned:
        pair = destination.name if destination.name in self.learned_pairs else ""
        if (pair, key) not in self._lessons:
            self._lessons[(pair, key)] = learning.learned(self.source.name, destination.name, key)
        return self._lessons[(pair, key)]

    def zero(self, vm: VirtualMachine) -> float | None:
        if vm.uuid not in self.migrated:
            return None
        if vm.uuid not in self._zero:
            self._zero[vm.uuid] = learned_zero_page_fraction(vm.uuid)
        return self._zero[vm.uuid]

    def predict(self, vm: VirtualMachine, destination: Host, params: MigrationParameters) -> Prediction:
        """The prediction for `vm` to `destination`; destinations this source
        never migrated to share one (they share every input)."""
        key = (vm.pk, destination.name if destination.name in self.learned_pairs else "")
        if key not in self._predictions:
            self._predictions[key] = self._predict(vm, destination, params)
        return self._predictions[key]

    def _predict(self, vm: VirtualMachine, destination: Host, params: MigrationParameters) -> Prediction:
        basis = []
        series = self.series.get(vm.uuid)
        if series:
            dirty = statistics.mean(m.dirty_rate_mib_s for m in series)
            readings = [(m.window_s, m.dirty_rate_mib_s) for m in series]
            curve = tuple(readings) if len({w for w, _ in readings}) > 1 else ()
            when = timezone.localtime(series[-1].measured_at).strftime("%Y-%m-%d %H:%M")
            basis.append(f"dirty rate {dirty:.1f} MiB/s ({len(series)} readings, measured {when})")
        else:
            dirty, curve = DEFAULT_DIRTY_RATE_MIB_S, ()
            basis.append(
                f"no dirty-rate reading of {vm.name}: {DEFAULT_DIRTY_RATE_MIB_S:g} MiB/s assumed (measure it on the "
                "VM page for a firmer plan)"
            )
        learned, overhead_ms = self.link(destination)
        cap = params.bandwidth_mib_s
        if cap:
            bandwidth = float(min(cap, learned) if learned else cap)
            said = "the bandwidth limit" if not learned or cap <= learned else "the measured link speed"
            basis.append(f"{bandwidth:.0f} MiB/s ({said})")
        elif learned:
            bandwidth = learned
            basis.append(f"{bandwidth:.0f} MiB/s (earlier migrations {self.source.name} → {destination.name})")
        else:
            bandwidth = DEFAULT_BANDWIDTH_MIB_S
            basis.append(
                f"{DEFAULT_BANDWIDTH_MIB_S:g} MiB/s assumed: no bandwidth limit, and no earlier migration from "
                f"{self.source.name} to this host measured the link"
            )
        zero = self.zero(vm)
        if zero:
            basis.append(f"{zero:.0%} zero pages at its last migration")
        inp = params.planner_input(
            memory_mib=max(vm.memory_kib, 1024) / 1024,
            dirty_rate_mib_s=dirty,
            dirty_rate_curve=curve,
            bandwidth_mib_s=bandwidth,
            bandwidth_is_cap=bool(cap),
            zero_page_fraction=zero or 0.0,
        )
        inp = replace(
            inp,
            final_copy_bandwidth_mib_s=learned,
            switchover_overhead_ms=inp.switchover_overhead_ms if overhead_ms is None else overhead_ms,
        )
        result = self._plans.get(inp)
        if result is None:
            result = self._plans[inp] = planner.evaluate(inp)
        lesson = self.lesson(destination, learning.option_key(params))
        total = result.total_time_s
        if result.verdict is not planner.Verdict.WILL_NOT_CONVERGE:
            total *= lesson.factor
            if lesson.samples:
                basis.append(
                    f"×{lesson.factor:.2f}, learned from {lesson.samples} earlier {lesson.key} migration"
                    f"{'s' if lesson.samples != 1 else ''} ({lesson.scope})"
                )
        return Prediction(total, result.downtime_ms, result.verdict, result.reason, tuple(basis), inp)

    def advice(self, prediction: Prediction) -> str:
        """Why the VM would not finish, and the first change that helps."""
        if prediction.inp not in self._advice:
            recommendations = planner.recommend(prediction.inp)
            extra = f" {recommendations[0].explanation}" if recommendations else ""
            self._advice[prediction.inp] = f"{prediction.reason}{extra}"
        return self._advice[prediction.inp]


# ------------------------------------------------------------ planning


@dataclass
class _Option:
    destination: Host
    report: Report
    prediction: Prediction
    start_s: float = 0.0
    left_kib: int = 0

    @property
    def finish_s(self) -> float:
        return self.start_s + self.prediction.total_s


def plan_evacuation(
    source: Host,
    *,
    destinations: list[Host] | None = None,
    policy: str | None = None,
    vms=None,
    parameters: dict[str, Any] | None = None,
) -> Plan:
    """The plan to move every running VM off `source` (or the VMs `vms`, for
    a bulk move) to the enabled hosts not in maintenance (or `destinations`,
    each still judged), each migration under the migration policy `policy`
    (migrator.policies; default: the wizard's) on top of the wizard's default
    parameters, changed by `parameters` (record keys, e.g. {"tls": True}).
    Raises policies.UnknownPolicy for a policy that does not exist."""
    policy = policy or policies.DEFAULT_POLICY
    chosen_policy = policies.get(policy)
    overrides = dict(parameters or {})
    vm_list = list(source.vms.all() if vms is None else vms)
    candidates, refused_hosts = _destinations(source, destinations)
    if not candidates and not refused_hosts:
        refused_hosts = [
            "No host may receive it: every other host is disabled, in maintenance or takes no incoming "
            "migration; add or enable one."
        ]
    limits = {
        "outgoing": source.outgoing_limit,
        "total": settings.MIGRATION_MAX_TOTAL,
        "incoming": {h.name: h.incoming_limit for h in candidates},
    }
    plan = Plan(source.pk, source.name, policy, timezone.now(), limits=limits)

    movable = []
    for vm in vm_list:
        if vm.host_id != source.pk:
            plan.unmovable.append(_unmovable(vm, [f"{vm.name} is not on {source.name}; plan it from its own host."]))
        elif not vm.running:
            reason = f"{vm.name} is {vm.state}: only running VMs are live-migrated, so it stays on {source.name}."
            plan.unmovable.append(_unmovable(vm, [reason], skipped=True))
        else:
            vm.host = source  # the same row: its name and prefixes without a query per VM
            movable.append(vm)
    sending = min(source.outgoing_limit, settings.MIGRATION_MAX_TOTAL)
    if sending <= 0:
        why = (
            f"{source.name} may send no migration at once (its outgoing limit is {source.outgoing_limit}); raise "
            "it on the host's page."
            if source.outgoing_limit <= 0
            else "The site allows no migration at once (MIGRATION_MAX_TOTAL is 0); raise it."
        )
        plan.unmovable += [_unmovable(vm, [why]) for vm in movable]
        return plan

    inventory = StoredInventory([source, *candidates], movable)
    busy = [vm for vm in movable if vm.uuid in inventory.active]
    for vm in busy:
        reason = (
            f"{vm.name} is already being migrated (migration #{inventory.active[vm.uuid]}); plan it once that ends."
        )
        plan.unmovable.append(_unmovable(vm, [reason]))
    movable = [vm for vm in movable if vm.uuid not in inventory.active]
    predictor = _Predictor(source, movable)
    options: dict[int, list[_Option]] = {}
    refusals: dict[int, list[str]] = {}
    params_for: dict[int, MigrationParameters] = {}
    defaults = _WizardDefaults(candidates[0], overrides, inventory) if candidates else None
    for vm in movable:
        if defaults is not None:
            params_for[vm.pk] = chosen_policy.parameters(defaults(vm), vm.memory_kib)
        options[vm.pk], refusals[vm.pk] = _judge(vm, source, candidates, params_for.get(vm.pk), inventory, predictor)
        refusals[vm.pk] = [*refused_hosts, *refusals[vm.pk]]

    def best_time(vm: VirtualMachine) -> float:
        return min(o.prediction.total_s for o in options[vm.pk])

    placeable = [vm for vm in movable if options[vm.pk]]
    placeable.sort(key=lambda vm: (-best_time(vm), -vm.memory_kib, vm.name))
    for vm in movable:
        if not options[vm.pk]:
            plan.unmovable.append(_unmovable(vm, _collapse(refusals[vm.pk])))

    slots = Slots(source.outgoing_limit, settings.MIGRATION_MAX_TOTAL, {h.pk: h.incoming_limit for h in candidates})
    plan.slot_overhead_s, overhead_words = learning.slot_overhead(source.name)
    plan.notes.append(overhead_words)
    plan.notes += _occupy_running(slots, source, candidates, plan.slot_overhead_s)
    committed: Counter = Counter()
    placed: Counter = Counter()
    for vm in placeable:
        fitting, full = [], []
        for option in options[vm.pk]:
            d = option.destination
            memory = Report()
            check_memory(memory, vm, d, inventory.facts[d.pk], committed[d.pk])
            if memory.failures:
                full.append(f"{d.name}: {memory.failures[0].message}")
                continue
            option.start_s = slots.earliest(d.pk)
            option.left_kib = inventory.facts[d.pk].memory_free_kib - committed[d.pk] - vm.memory_kib
            fitting.append(option)
        if not fitting:
            plan.unmovable.append(_unmovable(vm, _collapse([*refusals[vm.pk], *full])))
            continue
        chosen, why = _choose(fitting, placed)
        d = chosen.destination
        slots.take(d.pk, chosen.start_s, chosen.prediction.total_s + plan.slot_overhead_s)
        committed[d.pk] += vm.memory_kib
        placed[d.pk] += 1
        params = params_for[vm.pk]
        plan.steps.append(
            Step(
                vm_id=vm.pk,
                vm_uuid=vm.uuid,
                vm_name=vm.name,
                memory_mib=vm.memory_kib // 1024,
                destination_id=d.pk,
                destination_name=d.name,
                predicted_s=round(chosen.prediction.total_s, 3),
                predicted_downtime_ms=_round(chosen.prediction.downtime_ms),
                start_offset_s=round(chosen.start_s, 3),
                reasons=_step_reasons(chosen, why, fitting, [*refusals[vm.pk], *full]),
                basis=list(chosen.prediction.basis),
                parameters=params.as_record(),
                report=chosen.report.as_list(),
                prediction=predict_for(vm, d, params),
            )
        )
    ends = (s.end_offset_s + plan.slot_overhead_s for s in plan.steps)
    plan.predicted_total_s = round(max(ends, default=0.0), 3)
    return plan


def _occupy_running(slots: Slots, source: Host, candidates: list[Host], overhead_s: float) -> list[str]:
    """Put the migrations already holding slots out of the source or into a
    candidate into the simulation, each until its predicted end (at least
    the slot overhead from now), and say so."""
    by_name = {h.name: h.pk for h in candidates}
    names = [source.name, *by_name]
    held = Migration.objects.filter(state__in=SLOT_STATES).filter(
        Q(source_name=source.name) | Q(destination_name__in=names)
    )
    now = timezone.now()
    notes = []
    for m in held.only("pk", "vm_name", "source_name", "destination_name", "started_at", "prediction"):
        from_source = m.source_name == source.name
        if not from_source and m.destination_name not in by_name:
            continue
        predicted = ((m.prediction or {}).get("plan") or {}).get("total_time_s") or 0.0
        elapsed = (now - m.started_at).total_seconds() if m.started_at else 0.0
        left = max(float(predicted) - elapsed, 0.0) + overhead_s
        slots.busy(by_name.get(m.destination_name, m.destination_name), left, from_source=from_source)
        notes.append(
            f"{m.vm_name} ({m.source_name} to {m.destination_name}, migration #{m.pk}) is already migrating: "
            f"its slot is counted busy for about {left:.0f} s more"
        )
    return notes


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _unmovable(vm: VirtualMachine, reasons: list[str], skipped: bool = False) -> Unmovable:
    return Unmovable(vm.pk, vm.uuid, vm.name, vm.state, reasons, skipped)


def _destinations(source: Host, given: list[Host] | None) -> tuple[list[Host], list[str]]:
    """The hosts that may receive, and why each given one that may not."""
    if given is None:
        hosts = Host.objects.enabled().filter(in_maintenance=False).exclude(pk=source.pk)
        return [h for h in hosts if h.incoming_limit > 0], []
    candidates, refused = [], []
    for host in given:
        if host.pk == source.pk:
            refused.append(f"{host.name} is the source; choose another host.")
        elif not host.enabled:
            refused.append(f"{host.name} is disabled; enable it on its page, or choose another host.")
        elif host.in_maintenance:
            refused.append(
                f"{host.name} is in maintenance: no new migration goes to it; take it out of maintenance, or choose "
                "another host."
            )
        elif host.incoming_limit <= 0:
            refused.append(
                f"{host.name} may receive no migration (its incoming limit is 0); raise it on its page, or choose "
                "another host."
            )
        else:
            candidates.append(host)
    return candidates, refused


class _WizardDefaults:
    """What the wizard offers for a VM when every field is left as it is
    (every writable local disk copied into a created image, shared disks left
    in place), before the migration policy, changed by `overrides`. The form
    is validated once per disk layout (which disks it offers, copies and
    greys out); TLS is off by default, so it is built without the
    destination whose certificates it would look up to offer TLS."""

    def __init__(self, destination: Host, overrides: dict[str, Any], inventory: StoredInventory):
        self.destination = destination
        self.overrides = overrides
        self.inventory = inventory
        self._cleaned: dict[tuple, dict[str, Any]] = {}

    def __call__(self, vm: VirtualMachine) -> MigrationParameters:
        verdicts = self.inventory.verdicts(vm, vm.host)
        layout = (vm.storage_class, tuple((v.target, v.data, v.migratable, v.shared, v.kind) for v in verdicts))
        if layout not in self._cleaned:
            self._cleaned[layout] = self._clean(vm)
        base = MigrationParameters.from_form(self._cleaned[layout], vm.disks).replace(replace_stale_images=None)
        if self.overrides:
            base = MigrationParameters.from_record({**base.as_record(), **self.overrides})
        return base

    def _clean(self, vm: VirtualMachine) -> dict[str, Any]:
        from ..forms import MigrationForm

        form = MigrationForm(vm=vm)
        data: dict[str, Any] = {"destination": self.destination.pk}
        for name, form_field in form.fields.items():
            value = form_field.initial
            if name == "destination" or value is None or value is False:
                continue
            data[name] = "on" if value is True else value
        bound = MigrationForm(data, vm=vm, run_prechecks=False)
        bound.is_valid()
        return dict(bound.cleaned_data)


def _judge(
    vm: VirtualMachine,
    source: Host,
    candidates: list[Host],
    params: MigrationParameters | None,
    inventory: StoredInventory,
    predictor: _Predictor,
) -> tuple[list[_Option], list[str]]:
    """The destinations that pass for `vm` (with nothing yet committed), and
    why each other one does not, one line per host."""
    passing, refused = [], []
    for destination in candidates:
        report = run_inventory_prechecks(vm, source, destination, params, inventory=inventory)
        if report.failures:
            refused.append(f"{destination.name}: " + " ".join(c.message for c in report.failures))
            continue
        prediction = predictor.predict(vm, destination, params)
        if prediction.verdict is planner.Verdict.WILL_NOT_CONVERGE:
            refused.append(
                f"{destination.name}: predicted not to finish under policy {params.policy}: "
                + predictor.advice(prediction)
            )
            continue
        passing.append(_Option(destination, report, prediction))
    return passing, refused


def _collapse(reasons: list[str]) -> list[str]:
    """Reasons every destination shares (the VM's own), said once."""
    if len(reasons) < 2:
        return reasons
    tails = [r.partition(": ")[2] for r in reasons]
    if len(set(tails)) == 1 and tails[0]:
        return [f"every destination ({', '.join(r.partition(': ')[0] for r in reasons)}): {tails[0]}"]
    return reasons


def _choose(fitting: list[_Option], placed: Counter) -> tuple[_Option, str]:
    """The destination that finishes the VM first; near-ties by downtime,
    then by fewer VMs of this plan and more memory left."""
    best = min(fitting, key=lambda o: o.finish_s)
    near = [o for o in fitting if o.finish_s <= best.finish_s + NEAR_TIE * best.prediction.total_s + 1e-6]
    downtimes = [o.prediction.downtime_ms for o in near if o.prediction.downtime_ms is not None]
    if downtimes:
        lowest = min(downtimes)
        near = [o for o in near if (o.prediction.downtime_ms or 0) <= lowest * (1 + NEAR_TIE) + 1]
    chosen = min(near, key=lambda o: (placed[o.destination.pk], -o.left_kib, o.destination.name))
    if len(near) == 1:
        why = "it finishes first"
    else:
        why = (
            f"it finishes first with {len(near) - 1} other host{'s' if len(near) > 2 else ''} "
            f"as early, and of those it has the fewest VMs of this plan ({placed[chosen.destination.pk]}) "
            "and the most memory left"
        )
    return chosen, why


def _step_reasons(chosen: _Option, why: str, fitting: list[_Option], refused: list[str]) -> list[str]:
    d, p = chosen.destination, chosen.prediction
    downtime = f", {p.downtime_ms:.0f} ms downtime" if p.downtime_ms is not None else ""
    reasons = [
        f"{d.name}: {why} (predicted {p.total_s:.1f} s{downtime}, starting {chosen.start_s:.0f} s into the plan; "
        f"{chosen.left_kib // 1024} MiB free there after it)"
    ]
    reasons += [f"{d.name}: {c.message}" for c in chosen.report.warnings]
    others = sorted((o for o in fitting if o is not chosen), key=lambda o: (o.finish_s, o.destination.name))
    if others:
        shown = ", ".join(f"{o.destination.name} ({o.prediction.total_s:.1f} s)" for o in others[:ALSO_POSSIBLE_SHOWN])
        more = len(others) - ALSO_POSSIBLE_SHOWN
        reasons.append(f"also possible: {shown}" + (f" and {more} more" if more > 0 else ""))
    return reasons + _collapse(refused)
