import json

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosts import gateway
from hosts.certificates.readiness import expiry_warnings
from hosts.models import Host, VirtualMachine

from . import actions
from .audit.requests import audit, client_address
from .fleet import slots
from .forms import ActionForm, SettleForm
from .live import migration_state
from .models import Migration, MigrationState
from .planning import dirtyrate
from .policies import describe as describe_parameters
from .roles import AUDITORS, OPERATORS, has_role, role_required, sees_migrations


@role_required()
def home(request):
    hosts = Host.objects.all()
    sees = sees_migrations(request.user)
    context = {
        "hosts": hosts,
        "vm_count": VirtualMachine.objects.count(),
        "running_vm_count": VirtualMachine.objects.running().count(),
        "active": Migration.objects.active().exclude(state=MigrationState.WAITING).order_by("created_at")
        if sees
        else Migration.objects.none(),
        "queue": slots.waiting_queue() if sees else [],
        "occupancy": slots.occupancy() if sees else {},
        "site_limit": settings.MIGRATION_MAX_TOTAL,
        "recent": Migration.objects.finished().order_by("-finished_at")[:10] if sees else [],
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
            "can_cancel": migration.can_cancel and has_role(request.user, OPERATORS),
            "queue_position": slots.position_of(migration),
            "can_act": has_role(request.user, OPERATORS),
            "allows_postcopy": actions.allows_postcopy(migration),
            "action_kinds": [str(kind) for kind in actions.available_actions(migration)],
            "settle_form": SettleForm(initial={"vm_location": migration.vm_location})
            if request.user.is_superuser and actions.can_settle(migration)
            else None,
        },
    )


def _requester(request) -> actions.Requester:
    return actions.Requester(request.user, "browser", client_address(request))


def _act(request, pk: int, do) -> HttpResponse:
    migration = get_object_or_404(Migration, pk=pk)
    try:
        message = do(migration)
    except actions.ActionRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.info(request, message)
    return redirect(migration)


@require_POST
@role_required(OPERATORS)
def migration_cancel(request, pk: int):
    return _act(request, pk, lambda m: actions.request_cancel(m, _requester(request)))


@require_POST
@role_required(OPERATORS)
def migration_action(request, pk: int):
    """Bandwidth, max downtime, post-copy now, force complete: applied by the
    worker within a sampling interval."""
    form = ActionForm(request.POST)

    def do(migration: Migration) -> str:
        if not form.is_valid():
            raise actions.ActionRefused(" ".join(e for errors in form.errors.values() for e in errors))
        action = actions.request_action(
            migration, form.cleaned_data["kind"], form.cleaned_data["value"], _requester(request)
        )
        return f"Asked: {action.label}. The worker applies it within a second; the timeline shows the result."

    return _act(request, pk, do)


@require_POST
@role_required(OPERATORS)
def migration_resume(request, pk: int):
    def do(migration: Migration) -> str:
        actions.request_resume(migration, _requester(request))
        return "Resuming post-copy: a worker takes it up now."

    return _act(request, pk, do)


@require_POST
@role_required()
def migration_settle(request, pk: int):
    form = SettleForm(request.POST)

    def do(migration: Migration) -> str:
        if not form.is_valid():
            raise actions.ActionRefused(" ".join(e for errors in form.errors.values() for e in errors))
        data = form.cleaned_data
        actions.settle_by_hand(migration, data["state"], data["vm_location"], data["reason"], _requester(request))
        return f"Migration #{migration.pk} settled by hand as {data['state']}."

    return _act(request, pk, do)


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
