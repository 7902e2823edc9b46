"""Migration policies: named presets of how a migration converges and what
its timeouts do. The wizard, `manage.py migrate_vm --policy` and host
evacuation pick one by name.

Every policy has a completion timeout per GiB of memory and copied disk
(Nova's live_migration_completion_timeout, 800 s per GiB by default; KubeVirt
uses 150) and a progress timeout (the remaining data has not fallen for that
long, KubeVirt's progressTimeout), each taking the policy's action. The
migration runs with the shorter of the completion timeout and the policy's
own timeout (post-copy after N s, or the custom timeout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hosts.models import Host, VirtualMachine

from .parameters import COMPRESSION_WORDS, TIMEOUT_ACTION_WORDS, MigrationParameters, disk_words
from .planning import learning, planner
from .planning.prediction import measured_input, planner_input_for

MINIMAL_DOWNTIME = "minimal-downtime"
POSTCOPY_AFTER = "postcopy-after"
SUSPEND_IF_NEEDED = "suspend-if-needed"
CUSTOM = "custom"

DEFAULT_POLICY = CUSTOM
DEFAULT_POSTCOPY_AFTER_S = 30
DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S = 800  # Nova's default; KubeVirt uses 150
DEFAULT_PROGRESS_TIMEOUT_S = 150  # KubeVirt's default progressTimeout
GIB = 2**30
ACTIONS = ("abort", "postcopy", "suspend")

# The parameters a preset decides; "custom" leaves them to the operator.
CONVERGENCE_FIELDS = ("max_downtime_ms", "auto_converge", "allow_postcopy", "timeout_s", "timeout_action")


class UnknownPolicy(ValueError):
    pass


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class Policy:
    name: str
    label: str
    description: str
    # What the policy's timeouts do; "" for custom: the operator's own action.
    action: str = ""
    auto_converge: bool = False
    allow_postcopy: bool = False

    @property
    def is_preset(self) -> bool:
        return self.name != CUSTOM

    def parameters(
        self,
        base: MigrationParameters,
        vm_memory_kib: int,
        disk_bytes: int | None = None,
        *,
        postcopy_after_s: int | None = KEEP,
        completion_timeout_per_gib_s: int | None = KEEP,
        progress_timeout_s: int | None = KEEP,
    ) -> MigrationParameters:
        """The parameters the migration runs with: `base` (the disks, the
        transport, the operator's custom values) under this policy. A setting
        left as KEEP is taken from `base`; `disk_bytes` (the copied disks'
        size) defaults to the size of `base`'s disk plan. The timeout is the
        shorter of the completion timeout (per GiB × memory and copied disk,
        rounded up to a second) and the policy's own one."""
        settings = {
            "postcopy_after_s": postcopy_after_s,
            "completion_timeout_per_gib_s": completion_timeout_per_gib_s,
            "progress_timeout_s": progress_timeout_s,
        }
        p = base.replace(policy=self.name, **{k: v for k, v in settings.items() if v is not KEEP})
        if disk_bytes is None:
            disk_bytes = copied_disk_bytes(p)
        completion = completion_timeout_s(p.completion_timeout_per_gib_s, vm_memory_kib, disk_bytes)
        if self.name == POSTCOPY_AFTER:
            own = p.postcopy_after_s or DEFAULT_POSTCOPY_AFTER_S
            p = p.replace(postcopy_after_s=own)
        else:
            own = p.timeout_s if self.name == CUSTOM else None
            p = p.replace(postcopy_after_s=None)
        bounds = [t for t in (own, completion) if t]
        timeout = min(bounds) if bounds else None
        action = self.action or p.timeout_action or "abort"
        changes: dict[str, Any] = {
            "timeout_s": timeout,
            "timeout_action": action if timeout or p.progress_timeout_s else "",
            "completion_timeout_s": completion,
        }
        if self.is_preset:
            # QEMU's own downtime limit (300 ms), as libvirt leaves it.
            changes.update(max_downtime_ms=None, auto_converge=self.auto_converge, allow_postcopy=self.allow_postcopy)
        return p.replace(**changes)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "description": self.description, "action": self.action}


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            MINIMAL_DOWNTIME,
            "Minimal downtime",
            "QEMU's defaults (pre-copy, a 300 ms pause at most); at a timeout the migration is aborted and the VM "
            "keeps running on the source.",
            action="abort",
        ),
        Policy(
            POSTCOPY_AFTER,
            "Post-copy after N s",
            "Pre-copy for N seconds, then post-copy: the VM moves to the destination and fetches the rest of its "
            "memory over the network. It always finishes, but until then it needs both hosts and the link.",
            action="postcopy",
            allow_postcopy=True,
        ),
        Policy(
            SUSPEND_IF_NEEDED,
            "Suspend if needed",
            "Auto-converge slows the guest's CPUs; if it still has not converged at a timeout, the VM is suspended "
            "so the copy finishes (a longer pause, but it always finishes).",
            action="suspend",
            auto_converge=True,
        ),
        Policy(
            CUSTOM,
            "Custom",
            "Your own max downtime, auto-converge, post-copy and timeout; the completion and progress timeouts "
            "take the timeout action you choose.",
        ),
    )
}
CHOICES = [(p.name, p.label) for p in POLICIES.values()]


def get(name: str) -> Policy:
    """The policy named `name`; UnknownPolicy names the ones there are."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        names = ", ".join(POLICIES)
        raise UnknownPolicy(f"There is no migration policy named {str(name)[:60]!r}; choose one of {names}.") from None


def copied_disk_bytes(parameters: MigrationParameters) -> int:
    """The virtual size of the disks `parameters` copies."""
    chosen = set(parameters.disks)
    return sum(int(d.get("capacity_bytes") or 0) for d in parameters.disk_plan if d.get("target") in chosen)


def completion_timeout_s(per_gib_s: int | None, vm_memory_kib: int, disk_bytes: int = 0) -> int | None:
    """per GiB × (memory + copied disk) in GiB, rounded up to a whole second:
    800 s per GiB of a 512 MiB VM with no disk copied is 400 s."""
    if not per_gib_s:
        return None
    gib = (int(vm_memory_kib) * 1024 + int(disk_bytes)) / GIB
    return max(1, math.ceil(per_gib_s * gib - 1e-9))


def for_vm(name: str, base: MigrationParameters, vm: VirtualMachine, **settings: Any) -> MigrationParameters:
    """The parameters of policy `name` for `vm` (what host evacuation calls)."""
    return get(name).parameters(base, vm.memory_kib, None, **settings)


# ------------------------------------------------------------ predictions


def outcome_words(plan: planner.Plan) -> str:
    """What the policy would do, in a few words: 'switches to post-copy at 30 s'."""
    at = f"{plan.timeout_at_s:.0f} s" if plan.timeout_at_s is not None else ""
    which = " (progress timeout)" if plan.timeout_fired == "progress" else ""
    if plan.mode == "precopy":
        words = f"converges in pre-copy after {plan.iterations} pass{'es' if plan.iterations != 1 else ''}"
        if plan.throttle_pct_final:
            words += f", the guest slowed to {100 - plan.throttle_pct_final} % of its CPU time"
    elif plan.mode == "postcopy":
        words = f"switches to post-copy at {at}{which}" if at else "switches to post-copy after the first pass"
    elif plan.mode == "suspend":
        pause = (plan.downtime_ms or 0) / 1000
        words = f"suspends the VM at {at}{which} for about {pause:.1f} s"
    elif plan.mode == "abort":
        words = f"aborts at {at}{which}; the VM stays on the source"
    else:
        words = "does not converge and has no timeout: it runs until cancelled"
    if plan.reason.startswith("Too close to call"):
        words += " (too close to call: with 20 % more dirtying)"
    return words


def predict_all(
    vm: VirtualMachine, destination: Host, base: MigrationParameters, chosen: str | None = None
) -> dict[str, Any]:
    """Every policy's predicted outcome for the review step: one row each
    (name, label, chosen, total time, downtime, what would happen), from the
    same measurements as the main prediction. `base` carries the operator's
    settings (N, the per-GiB and progress timeouts, the custom values)."""
    chosen = chosen or base.policy
    measured = measured_input(vm, destination, base)
    if not measured["available"]:
        return {"available": False, "reason": measured["reason"], "rows": []}
    rows = []
    for policy in POLICIES.values():
        parameters = policy.parameters(base, vm.memory_kib, None)
        plan = planner.evaluate(planner_input_for(parameters, measured))
        total = plan.total_time_s
        if plan.mode == "precopy":
            lesson = learning.learned(vm.host.name, destination.name, learning.option_key(parameters))
            total *= lesson.factor
        rows.append(
            {
                "name": policy.name,
                "label": policy.label,
                "chosen": policy.name == chosen,
                "verdict": plan.verdict.value,
                "mode": plan.mode,
                "total_time_s": round(total, 1),
                "downtime_ms": None if plan.downtime_ms is None else round(plan.downtime_ms, 1),
                "timeout_fired": plan.timeout_fired,
                "timeout_at_s": None if plan.timeout_at_s is None else round(plan.timeout_at_s, 1),
                "outcome": outcome_words(plan),
                "timeout_s": parameters.timeout_s,
                "timeout_action": parameters.effective_timeout_action,
            }
        )
    return {"available": True, "rows": rows}


def policy_words(record: dict[str, Any]) -> str:
    """'Post-copy after N s (N = 30 s)', from a record."""
    name = record.get("policy") or "custom"
    try:
        policy = get(name)
    except UnknownPolicy:
        return name
    if policy.name == POSTCOPY_AFTER and record.get("postcopy_after_s"):
        return f"{policy.label} (N = {record['postcopy_after_s']} s)"
    return policy.label


def describe(parameters: MigrationParameters | dict[str, Any]) -> list[tuple[str, str]]:
    """The requested parameters of a migration record, as label/value rows."""
    p = MigrationParameters.from_record(parameters).as_record()
    rows: list[tuple[str, str]] = [("Policy", policy_words(p))]
    plan = p.get("disk_plan") or [{"target": t} for t in p.get("disks") or []]
    if plan:
        rows.append(("Copy disks", ", ".join(disk_words(d) for d in plan)))
        rows.append(
            (
                "Destination images",
                "created (same format, size and path)" if p.get("create_images", True) else "already there",
            )
        )
        if p.get("replace_stale_images"):
            rows.append(("Stale images on the destination", "replaced"))
        rows.append(
            (
                "Source images after success",
                "removed" if p.get("remove_source_images") else "kept",
            )
        )
    else:
        rows.append(("Copy disks", "none (shared storage)"))
    rows.append(("Max downtime", f"{p['max_downtime_ms']} ms" if p.get("max_downtime_ms") else "libvirt's default"))
    bandwidth = p.get("bandwidth_mib_s") or 0
    rows.append(("Bandwidth limit", f"{bandwidth} MiB/s" if bandwidth else "unlimited"))
    rows.append(("Auto-converge", "on" if p.get("auto_converge") else "off"))
    rows.append(("Post-copy", "allowed (switch from the live page)" if p.get("allow_postcopy") else "not allowed"))
    action = TIMEOUT_ACTION_WORDS.get(p.get("timeout_action") or "", p.get("timeout_action") or "")
    if p.get("timeout_s"):
        rows.append(("Timeout", f"after {p['timeout_s']} s, {action}"))
    else:
        rows.append(("Timeout", "none"))
    per_gib = p.get("completion_timeout_per_gib_s")
    if per_gib:
        for_vm = f": {p['completion_timeout_s']} s for this VM" if p.get("completion_timeout_s") else ""
        rows.append(("Completion timeout", f"{per_gib} s per GiB of memory and copied disk{for_vm}, then {action}"))
    else:
        rows.append(("Completion timeout", "none"))
    if p.get("progress_timeout_s"):
        rows.append(
            ("Progress timeout", f"when the remaining data has not fallen for {p['progress_timeout_s']} s, {action}")
        )
    else:
        rows.append(("Progress timeout", "none"))
    method = p.get("compression") or ""
    if method:
        details = []
        if p.get("compression_level") is not None:
            details.append(f"level {p['compression_level']}")
        if p.get("compression_threads"):
            details.append(f"{p['compression_threads']} compression threads")
        if p.get("decompression_threads"):
            details.append(f"{p['decompression_threads']} decompression threads")
        words = COMPRESSION_WORDS.get(method, method)
        rows.append(("Compression", f"{words}, {', '.join(details)}" if details else words))
    else:
        rows.append(("Compression", "none"))
    parallel = p.get("parallel_connections") or 0
    rows.append(("Connections", f"{parallel} parallel (multifd)" if parallel >= 2 else "single channel"))
    rows.append(("Encryption", "TLS" if p.get("tls") else "none"))
    rows.append(("Migration threads pinned to CPUs", p.get("pin_cpus") or "not pinned"))
    rows.append(("On the destination", "persistent" if p.get("persistent_dest", True) else "transient"))
    rows.append(("On the source", "undefined" if p.get("undefine_source", True) else "kept defined"))
    rows.append(("Unsafe (skip libvirt's storage-safety check)", "yes" if p.get("unsafe") else "no"))
    return rows
