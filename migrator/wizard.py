"""The browser wizard: source and VM → destination (with each host's
pre-check verdict) → disks and parameters → review → start."""

from __future__ import annotations

from django.contrib import messages
from django.db import IntegrityError
from django.shortcuts import get_object_or_404, redirect, render

from hosts import gateway
from hosts.inventory import disk_verdicts
from hosts.models import Host, VirtualMachine
from hosts.views import audit, client_address

from .executor import queue_migration
from .forms import MigrationForm
from .models import Migration
from .parameters import describe_disk_plan
from .planning.dirtyrate import vm_dirty_rate_context
from .planning.prediction import predict_for
from .prechecks import run_prechecks
from .roles import OPERATORS, role_required


def _features(vm: VirtualMachine) -> gateway.MigrationFeatures | None:
    try:
        return gateway.migration_features(vm.host.connect_uri, vm.uuid)
    except gateway.GatewayError:
        return None


@role_required(OPERATORS)
def new_migration(request):
    vm_id = request.GET.get("vm") or request.POST.get("vm")
    if not vm_id:
        return _pick_vm(request)
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=vm_id)
    active = Migration.objects.active().for_vm(vm.uuid).first()
    if active is not None:
        messages.info(request, f"{vm.name} is already being migrated.")
        return redirect(active)
    destination_id = request.GET.get("destination") or request.POST.get("destination")
    if not destination_id:
        return _pick_destination(request, vm)
    destination = get_object_or_404(Host.objects.enabled(), pk=destination_id)
    features = _features(vm)
    if request.method != "POST":
        form = MigrationForm(vm=vm, features=features, destination=destination, initial={"destination": destination})
        return _render_parameters(request, vm, destination, form, features)

    form = MigrationForm(request.POST, vm=vm, features=features, destination=destination)
    if not form.is_valid() or "edit" in request.POST:
        return _render_parameters(request, vm, destination, form, features)
    prediction = predict_for(vm, destination, form.parameters())
    if "start" not in request.POST:
        return render(
            request,
            "migrator/new_review.html",
            {
                "vm": vm,
                "destination": destination,
                "form": form,
                "report": form.report,
                "parameters": form.parameters(),
                "prediction": prediction,
                "hidden": _post_items(form, {}),
                "applies": [
                    (change, _post_items(form, change["changes"])) for change in prediction.get("form_changes", [])
                ],
                # Measure the dirty rate right here; the page then offers to update the prediction.
                **vm_dirty_rate_context(request, vm),
                "dirty_rate_inline": True,
            },
        )
    try:
        migration = queue_migration(
            vm=vm,
            destination=form.cleaned_data["destination"],
            parameters=form.parameters(),
            report=form.report,
            user=request.user,
            client_address=client_address(request),
            prediction=prediction,
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
    messages.success(request, f"Migration #{migration.pk} of {vm.name} queued.")
    return redirect(migration)


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
        else:
            items.append((name, "" if value is None else str(value)))
    return items


def _pick_vm(request):
    hosts = Host.objects.enabled().prefetch_related("vms")
    active = {m.vm_uuid: m for m in Migration.objects.active()}
    rows = [(host, [(vm, active.get(vm.uuid)) for vm in host.vms.all() if vm.running]) for host in hosts]
    return render(request, "migrator/new_vm.html", {"rows": rows})


def _pick_destination(request, vm: VirtualMachine):
    options = []
    for host in Host.objects.enabled().exclude(pk=vm.host_id):
        # Judged with the plan the next step offers by default, so a VM with
        # local disks is not blocked for the disks it would copy.
        plan = MigrationForm.default_parameters(vm, host)
        report = run_prechecks(vm, vm.host, host, plan)
        options.append((host, report, describe_disk_plan(vm, plan)))
    return render(request, "migrator/new_destination.html", {"vm": vm, "options": options})


def _render_parameters(request, vm, destination, form, features):
    verdicts = disk_verdicts(vm.disks, vm.host.prefixes)
    disks = [(disk, next((v for v in verdicts if v.target == disk["target"]), None)) for disk in vm.disks]
    return render(
        request,
        "migrator/new_parameters.html",
        {"vm": vm, "destination": destination, "form": form, "features": features, "disks": disks},
    )
