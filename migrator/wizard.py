"""The browser wizard: source and VM → destination (with each host's
pre-check verdict) → disks and parameters → review → start."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django import forms
from django.contrib import messages
from django.core import signing
from django.db import IntegrityError, connections
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from hosts import gateway
from hosts.connection import connect_uri
from hosts.inventory import disk_verdicts
from hosts.models import Host, VirtualMachine

from . import policies
from .audit.requests import audit, client_address
from .forms import START_AT_FORMAT, MigrationForm
from .jobs import queue_migration
from .models import Migration
from .parameters import DEFAULT_PLANNER_DOWNTIME_MS, MigrationParameters, describe_disk_plan
from .planning.dirtyrate import vm_dirty_rate_context
from .planning.prediction import predict_for
from .prechecks import Report, read_source_facts, run_prechecks
from .roles import OPERATORS, role_required


def vm_features(vm: VirtualMachine) -> gateway.MigrationFeatures | None:
    """What the VM's QEMU offers for migration (compression methods, current
    limits), or None when its host does not answer."""
    try:
        return gateway.migration_features(connect_uri(vm.host), vm.uuid)
    except gateway.GatewayError:
        return None


REVIEW_SALT = "migrator.wizard.review"
REVIEW_MAX_AGE_S = 24 * 3600
# Destinations judged at once on the destination step: each waits for its own
# host, so a host that does not answer costs the page one bound, not one per host.
DESTINATION_CHECKS_AT_ONCE = 16


class StepChoice(forms.Form):
    """The wizard's position, from the query string or the form: a bad value
    is a 404, never a 500."""

    vm = forms.IntegerField(required=False, min_value=1)
    destination = forms.IntegerField(required=False, min_value=1)


@role_required(OPERATORS)
def new_migration(request):
    """Step 1 → 4, each its own view below; the query string and the form say
    which step the operator is at."""
    position = {k: request.GET.get(k) or request.POST.get(k) for k in StepChoice.base_fields}
    for key in StepChoice.base_fields:
        if request.GET.get(key) and request.POST.get(key) and request.GET[key] != request.POST[key]:
            # The page names one VM and destination; the form must agree, or
            # the record and the migration could differ.
            return HttpResponseBadRequest(
                f"The address names {key} {request.GET[key][:20]} but the form sends {key} {request.POST[key][:20]}: "
                "go back to the migration wizard and start again.",
                content_type="text/plain; charset=utf-8",
            )
    step = StepChoice(position)
    if not step.is_valid():
        raise Http404("No such VM or host.")
    if not step.cleaned_data["vm"]:
        return pick_vm(request)
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=step.cleaned_data["vm"])
    active = Migration.objects.active().for_vm(vm.uuid).first()
    if active is not None:
        messages.info(request, f"{vm.name} is already being migrated.")
        return redirect(active)
    if not step.cleaned_data["destination"]:
        return pick_destination(request, vm)
    destination = get_object_or_404(Host.objects.enabled().exclude(pk=vm.host_id), pk=step.cleaned_data["destination"])
    if request.method != "POST" or "edit" in request.POST:
        return choose_parameters(request, vm, destination)
    if "start" in request.POST:
        return start(request, vm, destination)
    return review(request, vm, destination)


def pick_vm(request):
    hosts = Host.objects.enabled().prefetch_related("vms")
    active = {m.vm_uuid: m for m in Migration.objects.active()}
    rows = [(host, [(vm, active.get(vm.uuid)) for vm in host.vms.all() if vm.running]) for host in hosts]
    return render(request, "migrator/new_vm.html", {"rows": rows})


def pick_destination(request, vm: VirtualMachine):
    # Judged with the plan the next step offers by default, so a VM with
    # local disks is not blocked for the disks it would copy.
    plans = [
        (host, MigrationForm.default_parameters(vm, host)) for host in Host.objects.enabled().exclude(pk=vm.host_id)
    ]
    reports = _judge_all(vm, plans) if plans else []
    options = [
        (host, report, describe_disk_plan(vm, plan)) for (host, plan), report in zip(plans, reports, strict=True)
    ]
    return render(request, "migrator/new_destination.html", {"vm": vm, "options": options})


def _judge_all(vm: VirtualMachine, plans: list[tuple[Host, MigrationParameters]]) -> list[Report]:
    """Each destination's report, all at once: the source is read once, and
    each destination waits for its own host only."""
    source_facts = read_source_facts(vm, vm.host)

    def judge(destination: Host, plan: MigrationParameters) -> Report:
        try:
            # A GET: reads only, never a transient pool on the destination.
            return run_prechecks(vm, vm.host, destination, plan, source_facts=source_facts, probe=False)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(min(len(plans), DESTINATION_CHECKS_AT_ONCE), thread_name_prefix="precheck") as pool:
        return list(pool.map(lambda pair: judge(*pair), plans))


def choose_parameters(request, vm: VirtualMachine, destination: Host, form: MigrationForm | None = None):
    features = vm_features(vm)
    if form is None and request.method == "POST":
        # "Change parameters" from the review: the values come back as they were.
        form = MigrationForm(request.POST, vm=vm, features=features, destination=destination, run_prechecks=False)
    elif form is None:
        form = MigrationForm(vm=vm, features=features, destination=destination, initial={"destination": destination})
    verdicts = disk_verdicts(vm.disks, vm.host.prefixes)
    disks = [(disk, next((v for v in verdicts if v.target == disk["target"]), None)) for disk in vm.disks]
    return render(
        request,
        "migrator/new_parameters.html",
        {
            "vm": vm,
            "destination": destination,
            "form": form,
            "features": features,
            "disks": disks,
            "policy_choices": list(zip(form["policy"], policies.POLICIES.values(), strict=True)),
        },
    )


def _valid_form(request, vm: VirtualMachine, destination: Host) -> MigrationForm:
    form = MigrationForm(request.POST, vm=vm, features=vm_features(vm), destination=destination)
    form.is_valid()
    return form


def review(request, vm: VirtualMachine, destination: Host):
    form = _valid_form(request, vm, destination)
    if form.errors:
        return choose_parameters(request, vm, destination, form)
    parameters = form.parameters()
    prediction = predict_for(vm, destination, parameters)
    # Every policy's outcome beside the chosen one's, from the same measurements.
    prediction["policies"] = policies.predict_all(vm, destination, form.raw_parameters(), parameters.policy)
    # What the operator sees here is what the record keeps: signed, so the
    # start step stores this report and prediction, not a recomputed pair.
    reviewed = signing.dumps(
        {"parameters": parameters.as_record(), "report": form.report.as_list(), "prediction": prediction},
        salt=REVIEW_SALT,
        compress=True,
    )
    return render(
        request,
        "migrator/new_review.html",
        {
            "vm": vm,
            "destination": destination,
            "form": form,
            "report": form.report,
            "parameters": parameters,
            "parameter_rows": policies.describe(parameters),
            "prediction": prediction,
            "start_at": form.scheduled_start,
            "hidden": _post_items(form, {}),
            "reviewed": reviewed,
            "applies": [
                (change, _post_items(form, _as_custom(parameters, change["changes"])))
                for change in prediction.get("form_changes", [])
            ],
            # Measure the dirty rate right here; the page then offers to update the prediction.
            **vm_dirty_rate_context(request, vm),
            "dirty_rate_inline": True,
        },
    )


def _reviewed(request, parameters) -> dict | None:
    try:
        reviewed = signing.loads(request.POST.get("reviewed", ""), salt=REVIEW_SALT, max_age=REVIEW_MAX_AGE_S)
    except signing.BadSignature:
        return None
    return reviewed if reviewed.get("parameters") == parameters.as_record() else None


def start(request, vm: VirtualMachine, destination: Host):
    form = _valid_form(request, vm, destination)
    if form.errors:
        # Something changed since the review (another migration, a host): say so on the parameters step.
        return choose_parameters(request, vm, destination, form)
    parameters = form.parameters()
    reviewed = _reviewed(request, parameters)
    if reviewed is None:
        messages.warning(request, "The review is out of date or the parameters changed; review them again.")
        return review(request, vm, destination)
    try:
        migration = queue_migration(
            vm=vm,
            destination=destination,
            parameters=parameters,
            report=reviewed["report"],
            user=request.user,
            client_address=client_address(request),
            prediction=reviewed["prediction"],
            not_before=form.scheduled_start,
        )
    except IntegrityError:
        # R2: a double submit (or a second operator) finds the first migration.
        existing = Migration.objects.active().for_vm(vm.uuid).first()
        messages.warning(request, f"{vm.name} is already being migrated; showing that migration.")
        return redirect(existing) if existing else redirect("migrator:list")
    audit(
        request,
        "migration.started",
        migration,
        vm=vm.name,
        source=vm.host.name,
        destination=destination.name,
        parameters=migration.parameters,
    )
    if form.scheduled_start:
        when = timezone.localtime(form.scheduled_start).strftime("%Y-%m-%d %H:%M %Z")
        messages.success(request, f"Migration #{migration.pk} of {vm.name} is scheduled for {when}.")
    else:
        messages.success(request, f"Migration #{migration.pk} of {vm.name} queued.")
    return redirect(migration)


def _as_custom(parameters: MigrationParameters, changes: dict) -> dict:
    """A recommendation's form changes: under a preset that decides what the
    change touches, the preset's own values become the custom ones first, so
    the change applies on top of what the operator reviewed."""
    if parameters.policy == policies.CUSTOM or not set(changes) & set(policies.CONVERGENCE_FIELDS):
        return changes
    own = parameters.postcopy_after_s if parameters.policy == policies.POSTCOPY_AFTER else None
    return {
        "policy": policies.CUSTOM,
        "max_downtime_ms": parameters.max_downtime_ms or int(DEFAULT_PLANNER_DOWNTIME_MS),
        "auto_converge": parameters.auto_converge,
        "allow_postcopy": parameters.allow_postcopy,
        "timeout_s": own or "",
        "timeout_action": parameters.timeout_action or "abort",
        **changes,
    }


def _post_items(form: MigrationForm, overrides: dict) -> list[tuple[str, str]]:
    """The form's cleaned values as POST pairs, so the review step can resend
    them (and each recommendation can resend them changed)."""
    values = {**form.cleaned_data, **overrides}
    items: list[tuple[str, str]] = []
    for name, value in values.items():
        if name not in form.fields:
            continue
        if name == "destination":
            items.append((name, str(value.pk)))
        elif isinstance(value, bool):
            if value:
                items.append((name, "on"))
        elif isinstance(value, list | tuple):
            items.extend((name, str(v)) for v in value)
        elif isinstance(value, datetime):
            items.append((name, timezone.localtime(value).strftime(START_AT_FORMAT)))
        else:
            items.append((name, "" if value is None else str(value)))
    return items
