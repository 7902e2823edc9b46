from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from migrator.models import AuditEvent, Migration
from migrator.planning.dirtyrate import vm_dirty_rate_context
from migrator.roles import OPERATORS, role_required, superuser_required

from . import gateway, inventory
from .forms import HostForm, LifecycleForm
from .models import Host, VirtualMachine


def client_address(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def audit(request, action: str, obj=None, **details) -> AuditEvent:
    return AuditEvent.record(
        action, actor=request.user, obj=obj, details=details, client_address=client_address(request)
    )


@role_required()
def host_list(request):
    hosts = Host.objects.all()
    counts = {}
    for vm in VirtualMachine.objects.values("host_id", "state"):
        entry = counts.setdefault(vm["host_id"], {"total": 0, "running": 0})
        entry["total"] += 1
        entry["running"] += vm["state"] in ("running", "blocked")
    rows = [(host, counts.get(host.pk, {"total": 0, "running": 0})) for host in hosts]
    return render(request, "hosts/list.html", {"rows": rows})


@role_required()
def host_detail(request, pk: int):
    host = get_object_or_404(Host, pk=pk)
    vms = list(host.vms.all())
    active = {m.vm_uuid: m for m in Migration.objects.active().filter(vm_uuid__in=[vm.uuid for vm in vms])}
    return render(
        request,
        "hosts/detail.html",
        {"host": host, "vms": [(vm, active.get(vm.uuid)) for vm in vms], "info": host.info},
    )


@superuser_required
def host_add(request):
    form = HostForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        host = form.save()
        audit(request, "host.added", host, uri=host.uri)
        inventory.refresh_host(host)
        _report_refresh(request, host)
        return redirect(host)
    return render(request, "hosts/form.html", {"form": form, "title": "Add a host"})


@superuser_required
def host_edit(request, pk: int):
    host = get_object_or_404(Host, pk=pk)
    form = HostForm(request.POST or None, instance=host)
    if request.method == "POST" and form.is_valid():
        changed = {name: form.cleaned_data[name] for name in form.changed_data}
        host = form.save()
        audit(request, "host.changed", host, changed=changed)
        if changed.keys() & {"uri", "shared_prefixes"}:
            inventory.refresh_host(host)
            _report_refresh(request, host)
        return redirect(host)
    return render(request, "hosts/form.html", {"form": form, "title": f"Edit {host.name}", "host": host})


@superuser_required
def host_remove(request, pk: int):
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


def _report_refresh(request, host: Host) -> None:
    if host.inventory_error:
        messages.error(request, f"Could not read {host.name}: {host.inventory_error}")
    else:
        messages.success(request, f"Read {host.name}: {host.vms.count()} VMs.")


@require_POST
@role_required(OPERATORS)
def host_test(request, pk: int):
    host = get_object_or_404(Host, pk=pk)
    try:
        info = gateway.host_info(host.connect_uri)
    except gateway.GatewayError as error:
        messages.error(request, f"Connection to {host.name} failed: {error.message} {error.hint}".strip())
    else:
        messages.success(
            request,
            f"Connected to {info.hostname}: libvirt {info.libvirt_version}, {info.driver} {info.hypervisor_version}.",
        )
    return redirect(host)


@require_POST
@role_required(OPERATORS)
def host_refresh(request, pk: int):
    host = get_object_or_404(Host, pk=pk)
    inventory.refresh_host(host)
    _report_refresh(request, host)
    return redirect(host)


@role_required()
def vm_detail(request, pk: int):
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=pk)
    verdicts = dict((v.target, v) for v in inventory.disk_verdicts(vm.disks, vm.host.prefixes))
    disks = [(disk, verdicts.get(disk["target"])) for disk in vm.disks]
    migrations = Migration.objects.for_vm(vm.uuid)[:20]
    active = Migration.objects.active().for_vm(vm.uuid).first()
    context = {"vm": vm, "disks": disks, "migrations": migrations, "active": active}
    context.update(vm_dirty_rate_context(request, vm))
    return render(request, "hosts/vm.html", context)


@require_POST
@role_required(OPERATORS)
def vm_action(request, pk: int):
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
        gateway.vm_lifecycle(vm.host.connect_uri, vm.uuid, action)
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
