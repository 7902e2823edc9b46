"""The fleet pages: a host's evacuation plan (a dry run: GET changes
nothing), a bulk move of chosen VMs, starting either as a batch, the batch
page with its live progress and report, cancelling it, and leaving
maintenance. They are served under the `hosts` and `migrator` URL names."""

from __future__ import annotations

from datetime import datetime

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosts.models import Host

from .. import policies
from ..actions import Requester
from ..audit.requests import client_address
from ..live import migration_state
from ..planning.evacuation import plan_evacuation
from ..roles import AUDITORS, OPERATORS, has_role, role_required
from . import batches
from .models import Batch, BatchKind

BEST = "best"


def _requester(request: HttpRequest) -> Requester:
    return Requester(request.user, "browser", client_address(request))


def _policy(request: HttpRequest) -> str:
    name = (request.POST.get("policy") or request.GET.get("policy") or policies.MINIMAL_DOWNTIME).strip()
    policies.get(name)  # raises policies.UnknownPolicy with a plain message
    return name


def _start_at(request: HttpRequest) -> datetime | None:
    return batches.parse_start_at(request.POST.get("start_at") or "")


def _selection(request: HttpRequest, host: Host):
    """The bulk move's VMs and destination, from the query string or the form."""
    data = request.POST if request.method == "POST" else request.GET
    try:
        ids = [int(v) for v in data.getlist("vm")]
    except ValueError:
        return None, None, "Choose the VMs from the list."
    vms = list(host.vms.filter(pk__in=ids))
    if not vms or len(vms) != len(set(ids)):
        return None, None, f"Choose one or more VMs that run on {host.name}."
    target = data.get("destination") or BEST
    if target == BEST:
        return vms, None, ""
    destination = Host.objects.filter(pk=target if str(target).isdigit() else -1).exclude(pk=host.pk).first()
    if destination is None:
        return None, None, "Choose a destination host other than the source, or “best”."
    return vms, [destination], ""


def _plan_page(request: HttpRequest, host: Host, kind: str) -> HttpResponse:
    try:
        policy = _policy(request)
    except policies.UnknownPolicy as error:
        return HttpResponseBadRequest(str(error))
    vms, destinations, problem = (None, None, "")
    if kind == BatchKind.BULK:
        vms, destinations, problem = _selection(request, host)
        if problem:
            messages.error(request, problem)
            return redirect(host)
    plan = plan_evacuation(host, destinations=destinations, policy=policy, vms=vms)
    if request.method == "POST":
        try:
            not_before = _start_at(request)
        except ValueError as error:
            messages.error(request, str(error))
        else:
            try:
                batch = batches.start(host, plan, _requester(request), kind=kind, not_before=not_before)
            except batches.BatchRefused as error:
                messages.error(request, str(error))
            else:
                return redirect(batch)
    return render(
        request,
        "fleet/plan.html",
        {
            "host": host,
            "plan": plan,
            "kind": kind,
            "policy": policy,
            "policy_choices": policies.CHOICES,
            "vms": vms or [],
            "destination": destinations[0] if destinations else None,
        },
    )


@role_required(OPERATORS)
def evacuate(request: HttpRequest, pk: int) -> HttpResponse:
    return _plan_page(request, get_object_or_404(Host, pk=pk), BatchKind.EVACUATION)


@role_required(OPERATORS)
def bulk(request: HttpRequest, pk: int) -> HttpResponse:
    return _plan_page(request, get_object_or_404(Host, pk=pk), BatchKind.BULK)


@require_POST
@role_required(OPERATORS)
def leave_maintenance(request: HttpRequest, pk: int) -> HttpResponse:
    host = get_object_or_404(Host, pk=pk)
    if batches.leave_maintenance(host, _requester(request)):
        messages.success(request, f"{host.name} left maintenance: migrations may go to it again.")
    else:
        messages.info(request, f"{host.name} was not in maintenance.")
    return redirect(host)


@role_required(OPERATORS, AUDITORS)
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(Batch, pk=pk)
    report = batches.report(batch)
    return render(
        request,
        "fleet/batch.html",
        {
            "batch": batch,
            "report": report,
            "can_cancel": batch.state == "running" and has_role(request.user, OPERATORS),
            "migrations_json": [migration_state(r.migration) for r in report.rows if r.migration],
        },
    )


@require_POST
@role_required(OPERATORS)
def batch_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(Batch, pk=pk)
    try:
        said = batches.cancel(batch, _requester(request), cancel_running=request.POST.get("cancel_running") == "1")
    except batches.BatchRefused as error:
        messages.error(request, str(error))
    else:
        messages.success(request, said)
    return redirect(batch)
