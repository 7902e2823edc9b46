import json

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosts import gateway
from hosts.certificates.readiness import expiry_warnings
from hosts.models import Host, VirtualMachine

from .audit.requests import audit
from .live import migration_state
from .models import Migration
from .parameters import describe as describe_parameters
from .planning import dirtyrate
from .roles import AUDITORS, OPERATORS, has_role, role_required


@role_required()
def home(request):
    hosts = Host.objects.all()
    context = {
        "hosts": hosts,
        "vm_count": VirtualMachine.objects.count(),
        "running_vm_count": VirtualMachine.objects.running().count(),
        "active": Migration.objects.active().order_by("created_at"),
        "recent": Migration.objects.finished().order_by("-finished_at")[:10],
    }
    context["certificate_warnings"] = expiry_warnings()
    return render(request, "migrator/home.html", context)


@role_required(OPERATORS, AUDITORS)
def migration_detail(request, pk: int):
    migration = get_object_or_404(Migration, pk=pk)
    return render(
        request,
        "migrator/detail.html",
        {
            "migration": migration,
            "migration_json": migration_state(migration),
            "samples": [s.as_dict() for s in migration.samples.all()],
            "events": migration.events.all(),
            "precheck": {"checks": migration.precheck_report},
            "job_precheck": {"checks": migration.job_precheck_report},
            "parameter_rows": describe_parameters(migration.parameters),
            "applied_json": json.dumps(migration.applied_parameters, indent=2, sort_keys=True),
            "applied_flag_names": gateway.migrate_flag_names(int(migration.applied_parameters.get("flags") or 0)),
            "can_cancel": migration.is_active and has_role(request.user, OPERATORS),
        },
    )


@require_POST
@role_required(OPERATORS)
def migration_cancel(request, pk: int):
    migration = get_object_or_404(Migration, pk=pk)
    if migration.request_cancel(request.user):
        audit(request, "migration.cancelled", migration, state=migration.state)
        messages.info(
            request,
            "Cancelled." if migration.state == "cancelled" else "Cancel requested: the migration is being aborted.",
        )
    else:
        messages.warning(request, f"Migration #{migration.pk} is already {migration.get_state_display().lower()}.")
    return redirect(migration)


@require_POST
@role_required(OPERATORS)
def vm_dirty_rate(request, pk: int):
    vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=pk)
    form = dirtyrate.DirtyRateForm(request.POST)
    # The wizard's review step posts with fetch() and stays on its page.
    inline = request.headers.get("Accept") == "application/json"
    error = dirtyrate.refusal(vm)
    if not error and not form.is_valid():
        error = " ".join(e for errors in form.errors.values() for e in errors)
    if error:
        if inline:
            return JsonResponse({"ok": False, "message": error}, status=409)
        messages.error(request, error)
        return redirect(vm)
    window, duration = form.cleaned_data["window_s"], form.cleaned_data["duration_s"]
    series = dirtyrate.start_measurement(vm, window, duration, request.user.username, form.cleaned_data["curve"])
    audit(request, "vm.dirty_rate_measured", vm, window_s=window, duration_s=duration)
    message = f"Measuring {vm.name}'s dirty rate: {window} s windows for {duration} s."
    if inline:
        return JsonResponse({"ok": True, "message": message, "series": series})
    messages.success(request, message)
    return redirect(vm)
