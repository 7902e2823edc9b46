"""The migration form: every parameter of the guide (R9–R15) with a sane
default, validated together in `clean()`, then checked against the live hosts
(pre-checks). The browser wizard and `manage.py migrate_vm` both use it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import MaxLengthValidator
from django.utils import timezone

from hosts import gateway
from hosts.inventory import disk_verdicts
from hosts.models import Host, StorageClass, VirtualMachine

from . import policies
from .models import ActionKind
from .parameters import LEVEL_RANGES, MigrationParameters
from .prechecks import Report, run_prechecks

TIMEOUT_ACTIONS = [
    ("suspend", "Suspend the VM so the copy finishes (the guide's --timeout)"),
    ("postcopy", "Switch to post-copy (the VM runs on the destination at once)"),
    ("abort", "Abort: the VM keeps running on the source"),
]
COMPRESSION_LABELS = {
    "": "None",
    "xbzrle": "xbzrle (delta encoding of re-dirtied pages)",
    "mt": "mt (multi-threaded zlib)",
    "zlib": "zlib (multifd; needs parallel connections)",
    "zstd": "zstd (multifd; needs parallel connections)",
}
DEFAULT_MAX_DOWNTIME_MS = 500
START_AT_MAX_DAYS = 30
START_AT_FORMAT = "%Y-%m-%dT%H:%M"


class DiskCheckboxes(forms.CheckboxSelectMultiple):
    """Every data disk is listed; those that cannot be copied are greyed out
    (the form still explains a refusal when a script submits one)."""

    def __init__(self, *args, **kwargs):
        self.disabled_values: set[str] = set()
        super().__init__(*args, **kwargs)

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        if value in self.disabled_values:
            option["attrs"]["disabled"] = True
        return option


class MigrationForm(forms.Form):
    destination = forms.ModelChoiceField(queryset=Host.objects.none(), empty_label=None)
    policy = forms.ChoiceField(
        choices=policies.CHOICES,
        initial=policies.DEFAULT_POLICY,
        widget=forms.RadioSelect,
        label="Migration policy",
        error_messages={
            "required": "Choose a migration policy.",
            "invalid_choice": "There is no migration policy named %(value)s; choose one of "
            + ", ".join(policies.POLICIES)
            + ".",
        },
    )
    postcopy_after_s = forms.IntegerField(
        min_value=1,
        max_value=86400,
        required=False,
        initial=policies.DEFAULT_POSTCOPY_AFTER_S,
        label="N: switch to post-copy after (s)",
        error_messages={
            "min_value": "Post-copy starts after at least 1 s of pre-copy.",
            "max_value": "Post-copy starts after at most 86400 s (a day) of pre-copy.",
        },
        help_text="Post-copy after N s only: seconds of pre-copy before the switch.",
    )
    completion_timeout_per_gib_s = forms.IntegerField(
        min_value=1,
        max_value=86400,
        required=False,
        initial=policies.DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S,
        label="Completion timeout (s per GiB)",
        error_messages={
            "min_value": "The completion timeout is at least 1 s per GiB; leave it empty for none.",
            "max_value": "The completion timeout is at most 86400 s per GiB; leave it empty for none.",
        },
        help_text="Seconds per GiB of memory and copied disk (Nova uses 800, KubeVirt 150): a migration still "
        "running after that takes the policy's action. Empty = none.",
    )
    progress_timeout_s = forms.IntegerField(
        min_value=1,
        max_value=86400,
        required=False,
        initial=policies.DEFAULT_PROGRESS_TIMEOUT_S,
        label="Progress timeout (s)",
        error_messages={
            "min_value": "The progress timeout is at least 1 s; leave it empty for none.",
            "max_value": "The progress timeout is at most 86400 s (a day); leave it empty for none.",
        },
        help_text="When the remaining data has not fallen for this long, take the policy's action. Empty = none.",
    )
    start_at = forms.DateTimeField(
        required=False,
        label="Start at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=START_AT_FORMAT),
        help_text="Empty = now. A time within 30 days, in the server's time zone.",
    )
    disks = forms.MultipleChoiceField(
        required=False,
        widget=DiskCheckboxes,
        label="Disks to copy",
        help_text="Local disks to copy (--copy-storage-all --migrate-disks). Shared, shareable and read-only "
        "disks cannot be chosen.",
    )
    create_images = forms.BooleanField(
        required=False,
        initial=True,
        label="Create destination images",
        help_text="Create each image on the destination with the same format, size and path before copying.",
    )
    replace_stale_images = forms.BooleanField(
        required=False,
        label="Replace stale images on the destination",
        help_text="An image already at the same path on the destination that no VM there uses (left by an "
        "earlier migration or by hand) is deleted and created afresh. Images a VM uses are never touched.",
    )
    remove_source_images = forms.BooleanField(
        required=False,
        initial=True,
        label="Remove the copied images from the source afterwards",
        help_text="Once libvirt reports the migration complete and the VM runs on the destination, the source's "
        "copies of the copied images are deleted, so the source is really freed and the VM can come back. "
        "Nothing is removed when the outcome is not certain.",
    )
    max_downtime_ms = forms.IntegerField(
        min_value=1,
        max_value=600000,
        initial=DEFAULT_MAX_DOWNTIME_MS,
        label="Max downtime (ms)",
        help_text="Longest pause allowed at switch-over (virsh migrate-setmaxdowntime). Larger values converge sooner.",
    )
    bandwidth_mib_s = forms.IntegerField(
        min_value=0,
        max_value=1000000,
        initial=0,
        label="Bandwidth limit (MiB/s)",
        help_text="0 = unlimited (virsh migrate-setspeed). A cap protects other traffic but slows convergence.",
    )
    auto_converge = forms.BooleanField(
        required=False,
        help_text="Throttle the guest's vCPUs when memory is dirtied faster than it is sent, so it converges.",
    )
    allow_postcopy = forms.BooleanField(
        required=False,
        label="Allow post-copy",
        help_text=(
            "Lets you switch to post-copy while it runs (or the timeout do it): the VM moves to the destination at "
            "once and fetches the rest of its memory over the network. Until it ends, the VM needs both hosts and "
            "the link between them: a network break splits its memory between the hosts (the dashboard can resume "
            "it once they see each other again), and a power loss or restart of either host loses the VM. "
            "Not with compression or parallel connections."
        ),
    )
    timeout_s = forms.IntegerField(
        min_value=1,
        max_value=86400,
        required=False,
        error_messages={
            "min_value": "The timeout is at least 1 s; leave it empty for no timeout.",
            "max_value": "The timeout is at most 86400 s (a day); leave it empty for no timeout.",
        },
        label="Timeout (s)",
        help_text="After this many seconds of pre-copy, take the action below. Empty = no timeout.",
    )
    timeout_action = forms.ChoiceField(
        choices=TIMEOUT_ACTIONS,
        initial="suspend",
        required=False,
        help_text="What this timeout, the completion timeout and the progress timeout do.",
    )
    compression = forms.ChoiceField(
        required=False,
        help_text="Only the methods this host's libvirt and QEMU support are offered.",
    )
    compression_level = forms.IntegerField(
        required=False,
        help_text="mt 0–9, zlib 0–9, zstd 0–20; empty = 1. xbzrle has no level.",
    )
    compression_threads = forms.IntegerField(
        required=False, min_value=1, max_value=255, initial=8, help_text="mt only: compression threads (default 8)."
    )
    decompression_threads = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=255,
        initial=2,
        help_text="mt only: decompression threads on the destination (default 2). Wait-for-thread stays at "
        "QEMU's default (on): libvirt has no parameter for it.",
    )
    parallel_connections = forms.IntegerField(
        min_value=0,
        max_value=255,
        initial=0,
        label="Parallel connections",
        help_text="0 = single channel. 2 or more = multifd (--parallel): faster on fast links, costs more CPU.",
    )
    tls = forms.BooleanField(
        required=False,
        label="Encrypt with TLS",
        help_text="--tls: needs migration certificates on both hosts. Single channel tops out at 100–200 MB/s; "
        "combine with parallel connections for more.",
    )
    pin_cpus = forms.CharField(
        required=False,
        label="Pin migration threads to CPUs",
        help_text="e.g. 0-1. Keeps migration work off the guest's CPUs (the guide suggests 2 CPUs per VM).",
    )
    persistent_dest = forms.BooleanField(
        required=False, initial=True, label="Keep persistent on the destination", help_text="--persistent"
    )
    undefine_source = forms.BooleanField(
        required=False, initial=True, label="Undefine on the source", help_text="--undefinesource"
    )
    unsafe = forms.BooleanField(
        required=False,
        help_text="--unsafe: skip libvirt's storage-safety check. Needed for shared storage libvirt does not "
        "recognise (it knows NFS, GFS2, OCFS2, CephFS…); on local disks that are not copied it corrupts them.",
    )

    def __init__(
        self,
        *args,
        vm: VirtualMachine,
        features: gateway.MigrationFeatures | None = None,
        destination: Host | None = None,
        run_prechecks: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.vm = vm
        self.run_prechecks = run_prechecks
        self.expected_destination = destination
        self.source = vm.host
        self.features = features
        self.report: Report | None = None
        self.fields["destination"].queryset = Host.objects.enabled().exclude(pk=self.source.pk)
        verdicts = disk_verdicts(vm.disks, self.source.prefixes)
        self.disk_verdicts = verdicts
        disk_field = self.fields["disks"]
        disk_field.choices = [(v.target, v.target) for v in verdicts if v.data]
        disk_field.widget.disabled_values = {v.target for v in verdicts if v.data and not v.migratable}
        targets = ", ".join(v.target for v in verdicts) or "none"
        disk_field.error_messages["invalid_choice"] = f"{vm.name} has no disk %(value)s (its disks: {targets})."
        if vm.storage_class == StorageClass.NON_SHARED:
            disk_field.initial = [v.target for v in verdicts if v.migratable]
        # The guide's shared-storage command is `virsh migrate --live --unsafe`: libvirt only
        # recognises NFS, GFS2, OCFS2, CephFS and a few others as shared and refuses the rest.
        self.fields["unsafe"].initial = self.default_unsafe = any(
            v.shared and not v.migratable and v.kind != "readonly" for v in verdicts
        )
        methods = features.compression_methods if features else []
        self.fields["compression"].choices = [("", "None")] + [(m, COMPRESSION_LABELS.get(m, m)) for m in methods]
        if features and features.max_downtime_ms:
            self.fields["max_downtime_ms"].help_text += f" Currently set on the VM: {features.max_downtime_ms} ms."
        if features and features.max_speed_mib_s is not None:
            current = (
                "unlimited" if features.max_speed_mib_s in (0, 8796093022207) else f"{features.max_speed_mib_s} MiB/s"
            )
            self.fields["bandwidth_mib_s"].help_text += f" Currently set on the VM (migrate-getspeed): {current}."
        if destination is not None:
            self._offer_tls(destination)
        zone = timezone.get_current_timezone_name()
        self.fields[
            "start_at"
        ].help_text = f"Empty = now. A time within {START_AT_MAX_DAYS} days, in the server's time zone ({zone})."
        self.fields["start_at"].error_messages["invalid"] = (
            f"Write the start time as YYYY-MM-DD HH:MM in the server's time zone ({zone}), or leave it empty "
            "to start now."
        )
        if features and not features.migration_pin:
            self.fields["pin_cpus"].help_text += (
                " This host's libvirt has no migration.pin; the QEMU emulator threads are pinned instead for "
                "the duration of the migration, then restored."
            )

    @classmethod
    def defaults(cls, vm: VirtualMachine, destination: Host, **overrides: Any) -> dict[str, Any]:
        """Submitted data as a browser would send the form untouched (ticked
        boxes as "on", unticked ones absent), with `overrides` applied."""
        form = cls(vm=vm, destination=destination)
        data: dict[str, Any] = {"destination": destination.pk}
        for name, field in form.fields.items():
            value = field.initial
            if name == "destination" or value is None:
                continue
            if isinstance(value, bool):
                if value:
                    data[name] = "on"
            else:
                data[name] = value
        for name, value in overrides.items():
            if value is None or value is False:
                data.pop(name, None)
            else:
                data[name] = "on" if value is True else value
        return data

    def _offer_tls(self, destination: Host) -> None:
        """TLS is offered only when both hosts have valid migration certificates
        on record covering their migration addresses (R14)."""
        from hosts.certificates.readiness import tls_readiness

        problems = [message for status, message in tls_readiness(self.source, destination) if status == "fail"]
        if problems:
            self.fields["tls"].disabled = True
            self.fields["tls"].help_text = "Not available: " + " ".join(problems)

    @classmethod
    def default_parameters(cls, vm: VirtualMachine, destination: Host) -> MigrationParameters:
        """The plan a user gets by leaving every field as offered: every
        writable local disk copied into a created image, shared disks left
        where they are. Whether to replace a stale image is not decided yet:
        the pre-checks then name it for the next step instead of failing."""
        form = cls(cls.defaults(vm, destination), vm=vm, destination=destination, run_prechecks=False)
        form.is_valid()
        return form.parameters().replace(replace_stale_images=None)

    def clean_disks(self) -> list[str]:
        chosen = self.cleaned_data.get("disks") or []
        verdicts = {v.target: v for v in self.disk_verdicts}
        refused = [verdicts[t] for t in chosen if not verdicts[t].migratable]
        if refused:
            raise forms.ValidationError([f"{v.target} cannot be copied: {v.reason}." for v in refused])
        return chosen

    def clean_pin_cpus(self) -> str:
        value = self.cleaned_data.get("pin_cpus", "").strip()
        if not value:
            return ""
        ncpus = int(self.source.info.get("logical_cpus") or 0) or 1
        try:
            gateway.parse_cpuset(value, ncpus)
        except ValueError as exc:
            raise forms.ValidationError(f"{exc} Write a list such as 0-1 or 0,2.") from None
        return value

    def clean_start_at(self):
        value = self.cleaned_data.get("start_at")
        if value is None:
            return None
        now = timezone.now()
        shown = timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")
        if value <= now:
            raise forms.ValidationError(
                f"Start at {shown} is in the past; choose a later time, or leave it empty to start now."
            )
        if value > now + timedelta(days=START_AT_MAX_DAYS):
            latest = timezone.localtime(now + timedelta(days=START_AT_MAX_DAYS)).strftime("%Y-%m-%d %H:%M")
            raise forms.ValidationError(
                f"Start at {shown} is more than {START_AT_MAX_DAYS} days ahead; choose a time before {latest}."
            )
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self._clean_policy(cleaned)
        self._clean_combinations(cleaned)
        if self.errors:
            return cleaned
        destination = cleaned.get("destination")
        expected = self.expected_destination
        if destination is not None and expected is not None and destination != expected:
            # The wizard's page is about one destination: never migrate to another one.
            self.add_error("destination", f"This wizard is migrating to {expected.name}; go back to change it.")
            return cleaned
        if destination is not None and self.run_prechecks:
            self.report = run_prechecks(self.vm, self.source, destination, self.parameters())
            for check in self.report.failures:
                self.add_error(None, f"{check.name}: {check.message}")
        return cleaned

    def _clean_policy(self, cleaned: dict[str, Any]) -> None:
        name = cleaned.get("policy")
        if not name:
            return
        per_gib, progress = cleaned.get("completion_timeout_per_gib_s"), cleaned.get("progress_timeout_s")
        if name == policies.POSTCOPY_AFTER and not cleaned.get("postcopy_after_s") and "postcopy_after_s" in cleaned:
            self.add_error(
                "postcopy_after_s", "Post-copy after N s needs N: the seconds of pre-copy before the switch (e.g. 30)."
            )
        if name == policies.SUSPEND_IF_NEEDED and not per_gib and not progress:
            self.add_error(
                "completion_timeout_per_gib_s",
                "Suspend if needed suspends the VM at the completion or the progress timeout: set at least one.",
            )
        if name == policies.CUSTOM:
            timed = cleaned.get("timeout_s") or per_gib or progress
            if timed and not cleaned.get("timeout_action"):
                self.add_error("timeout_action", "Choose what happens when a timeout is reached.")
            if not timed:
                cleaned["timeout_action"] = ""

    def _clean_combinations(self, cleaned: dict[str, Any]) -> None:
        timeout, action = cleaned.get("timeout_s"), cleaned.get("timeout_action")
        if timeout and not action and not cleaned.get("policy"):
            self.add_error("timeout_action", "Choose what happens when the timeout is reached.")
        method = cleaned.get("compression") or ""
        parallel = cleaned.get("parallel_connections") or 0
        if parallel == 1:
            self.add_error("parallel_connections", "Use 0 for a single channel, or 2 or more for multifd.")
        if method in ("zlib", "zstd") and parallel < 2:
            self.add_error(
                "compression",
                f"{method} compresses multifd channels: set parallel connections to 2 or more, "
                "or choose another method.",
            )
        postcopy = cleaned.get("allow_postcopy") or (timeout and action == "postcopy")
        if cleaned.get("policy") in policies.POLICIES:
            postcopy = self._effective(cleaned).allows_postcopy
        if postcopy and method in ("mt", "zlib", "zstd"):
            self.add_error("compression", "QEMU cannot combine post-copy with compression; choose one of the two.")
        elif postcopy and parallel >= 2:
            self.add_error(
                "parallel_connections",
                "QEMU cannot combine post-copy with parallel connections; choose one of the two.",
            )
        if method == "xbzrle" and parallel >= 2:
            self.add_error("compression", "xbzrle does not work with parallel connections; choose one of the two.")
        level = cleaned.get("compression_level")
        if level is not None:
            if not method:
                self.add_error("compression_level", "A compression level needs a compression method; choose one.")
            elif method not in LEVEL_RANGES:
                self.add_error("compression_level", f"{method} has no compression level; leave it empty.")
            else:
                low, high = LEVEL_RANGES[method]
                if not low <= level <= high:
                    self.add_error("compression_level", f"{method} levels go from {low} to {high}, not {level}.")
        if cleaned.get("tls") and not self.source.migration_address:
            # Not an error: libvirt falls back to the host name for the TLS name check.
            pass
        if cleaned.get("undefine_source") and not cleaned.get("persistent_dest") and self.vm.persistent:
            self.add_error(
                "persistent_dest",
                "Undefining the source without keeping the VM persistent on the destination would leave it "
                "defined nowhere; keep one of the two.",
            )

    def _effective(self, cleaned: dict[str, Any]) -> MigrationParameters:
        raw = MigrationParameters.from_form(cleaned, self.vm.disks)
        return policies.get(cleaned.get("policy") or policies.DEFAULT_POLICY).parameters(raw, self.vm.memory_kib)

    def raw_parameters(self) -> MigrationParameters:
        """What the operator entered, before the policy: the custom values
        and every policy's settings (what the review step compares)."""
        return MigrationParameters.from_form(self.cleaned_data, self.vm.disks)

    def parameters(self) -> MigrationParameters:
        """The requested parameters under the chosen policy, as the record stores them."""
        return self._effective(self.cleaned_data)

    @property
    def scheduled_start(self):
        """The scheduled start (an aware datetime), or None: now."""
        return self.cleaned_data.get("start_at")


class ActionForm(forms.Form):
    """An action on a running migration (see migrator.actions)."""

    kind = forms.ChoiceField(
        choices=ActionKind.choices, error_messages={"invalid_choice": "Choose an action the page offers."}
    )
    value = forms.IntegerField(
        required=False,
        min_value=1,
        error_messages={"invalid": "Enter a whole number.", "min_value": "Enter 1 or more."},
    )


class SettleForm(forms.Form):
    """A superuser's verdict on a record the dashboard cannot settle."""

    state = forms.ChoiceField(
        choices=[
            ("failed", "Failed: the VM stayed on (or went back to) the source"),
            ("succeeded", "Succeeded: the VM runs on the destination"),
            ("cancelled", "Cancelled"),
        ]
    )
    vm_location = forms.CharField(max_length=100, label="Where the VM runs now")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000, label="Reason")


class LoginForm(AuthenticationForm):
    """Django's login form, with the user name capped at the model's length
    before anything (login throttling included) stores it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = get_user_model()._meta.get_field(get_user_model().USERNAME_FIELD).max_length or 150
        self.fields["username"].max_length = limit
        self.fields["username"].validators.append(MaxLengthValidator(limit))
        self.fields["username"].widget.attrs["maxlength"] = str(limit)
