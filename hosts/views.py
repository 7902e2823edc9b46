"""The host pages that need nothing but hosts: the list, adding, editing,
testing and re-reading a host. The pages that also show migrations live in
migrator.host_pages, since hosts never imports the migration records."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from migrator.audit.requests import audit
from migrator.roles import OPERATORS, role_required, superuser_required

from . import gateway, inventory
from .connection import connect_uri
from .forms import HostForm
from .models import Host, VirtualMachine


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
        info = gateway.host_info(connect_uri(host))
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
