"""The host and VM pages that show migrations: a host's VMs with their active
migration, the refusal to remove a host that migrations use, the VM page
(its migrations and dirty-rate readings) and its lifecycle actions, refused
while the VM migrates (R2). They are served under the `hosts` URL names."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.forms import LifecycleForm
from hosts.models import Host, VirtualMachine

from .audit.requests import audit
from .models import Batch, BatchKind, Migration
from .planning import learning, planner, prediction
from .planning.dirtyrate import vm_dirty_rate_context
from .roles import OPERATORS, role_required, sees_migrations, superuser_required


@role_required()
def host_detail(request: HttpRequest, pk: int) -> HttpResponse:
    host = get_object_or_404(Host, pk=pk)
    vms = list(host.vms.all())
    active = {m.vm_uuid: m for m in Migration.objects.active().filter(vm_uuid__in=[vm.uuid for vm in vms])}
    sees = sees_migrations(request.user)
    if not sees:
        active = dict.fromkeys(active, True)  # "migrating", without the record
    return render(
        request,
        "hosts/detail.html",
        {
            "host": host,
            "vms": [(vm, active.get(vm.uuid)) for vm in vms],
            "info": host.info,
            "learned": learning.learned_from(host.name) if sees else [],
            "compression_learned": [
                found
                for method in planner.STREAM_COMPRESSORS
                if sees and (found := prediction.learned_compression(host.name, method))
            ],
            "running_vms": [vm for vm in vms if vm.running],
            "other_hosts": Host.objects.enabled().filter(in_maintenance=False).exclude(pk=host.pk),
            "batch": Batch.objects.filter(source=host, kind=BatchKind.EVACUATION).first() if sees else None,
        },
    )


@superuser_required
def host_remove(request: HttpRequest, pk: int) -> HttpResponse:
    host = get_object_or_404(Host, pk=pk)
    active = Migration.objects.active().filter(source=host) | Migration.objects.active().filter(destination=host)
    if request.method == "POST":
        if active.exists():
            messages.error(request, f"{host.name} has migrations in progress; wait for them to end or cancel them.")
            return redirect(host)
        audit(request, "host.removed", host, uri=host.uri)
        host.delete()
        messages.success(request, f"Removed {host.name}. Its past migrations stay in the history.")
        return redirect("hosts:list")
    return render(request, "hosts/confirm_remove.html", {"host": host, "active": active})


@role_required()
def vm_detail(request: HttpRequest, pk: int) -> HttpResponse:
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=pk)
    verdicts = dict((v.target, v) for v in inventory.disk_verdicts(vm.disks, vm.host.prefixes))
    disks = [(disk, verdicts.get(disk["target"])) for disk in vm.disks]
    sees = sees_migrations(request.user)
    migrations = Migration.objects.for_vm(vm.uuid)[:20] if sees else []
    active = Migration.objects.active().for_vm(vm.uuid).first()
    context = {
        "vm": vm,
        "disks": disks,
        "migrations": migrations,
        "active": active,
        "prediction_history": learning.vm_history(vm.uuid) if sees else [],
    }
    context.update(vm_dirty_rate_context(request, vm))
    return render(request, "hosts/vm.html", context)


@require_POST
@role_required(OPERATORS)
def vm_action(request: HttpRequest, pk: int) -> HttpResponse:
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=pk)
    form = LifecycleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown action; choose start, shut down, reboot or force off.")
        return redirect(vm)
    action = form.cleaned_data["action"]
    active = Migration.objects.active().for_vm(vm.uuid).first()
    if active is not None:
        # R2: no lifecycle operations while the VM migrates.
        messages.error(
            request,
            f"{vm.name} is being migrated (migration #{active.pk}); {action} is refused until it ends. "
            "Cancel the migration first if this cannot wait.",
        )
        audit(request, "vm.action_refused", vm, requested=action, migration=active.pk)
        return redirect(vm)
    try:
        gateway.vm_lifecycle(connect_uri(vm.host), vm.uuid, action)
    except gateway.GatewayError as error:
        messages.error(request, f"{action} failed: {error.message} {error.hint}".strip())
        audit(request, "vm.action_failed", vm, requested=action, error=error.as_dict())
    else:
        messages.success(request, f"{action} sent to {vm.name}.")
        audit(request, f"vm.{action}", vm, host=vm.host.name)
    try:
        refreshed = inventory.refresh_vm(vm.host, vm.uuid)
    except gateway.GatewayError:
        refreshed = vm
    return redirect(refreshed or vm.host)
