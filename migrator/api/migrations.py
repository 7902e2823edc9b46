"""Migrations through the API: list (the history filters), create (the
wizard's form, its pre-checks and messages, as field errors), detail with
samples and a `?wait=` long-poll, cancel, the live actions and resuming an
interrupted post-copy; pre-checks and predictions without starting
anything; dirty-rate readings of a VM and starting a measurement."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import IntegrityError
from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from hosts.models import VirtualMachine

from .. import actions, policies
from ..audit.models import AuditEvent
from ..audit.requests import client_address
from ..forms import MigrationForm
from ..history import HistoryFilterForm, filter_migrations
from ..jobs import queue_migration
from ..models import FINAL_STATES, DirtyRateMeasurement, Migration
from ..planning import dirtyrate
from ..planning.prediction import predict_for
from ..roles import AUDITORS, OPERATORS
from ..wizard import vm_features
from . import idempotency
from .errors import FormRefused, form_errors, refused
from .lookups import as_form_value, host_named, requester, vm_named
from .serializers import (
    ActionRequestSerializer,
    MessageSerializer,
    MigrationDetailSerializer,
    MigrationRequestSerializer,
    MigrationSerializer,
    PrecheckResultSerializer,
)

WAIT_POLL_S = 0.5


def migration_form(request) -> MigrationForm:
    """The wizard's form filled from a JSON body: the wizard's defaults for
    the VM and destination, with the body's fields on top. Validated: its
    pre-checks have run."""
    data = request.data
    if not hasattr(data, "get") or isinstance(data, list):
        raise ValidationError({"non_field_errors": ["Send a JSON object with at least vm and destination."]})
    missing = [name for name in ("vm", "destination") if data.get(name) in (None, "")]
    if missing:
        raise ValidationError({name: ["This field is required."] for name in missing})
    unknown = sorted(set(data) - set(MigrationForm.base_fields) - {"vm"})
    if unknown:
        raise ValidationError(
            {name: [f"Unknown field; the fields are vm, {', '.join(MigrationForm.base_fields)}."] for name in unknown}
        )
    vm, destination = vm_named(data.get("vm")), host_named(data.get("destination"))
    values = MigrationForm.defaults(vm, destination)
    for name, value in data.items():
        if name in ("vm", "destination"):
            continue
        if value is False:
            values.pop(name, None)
        else:
            values[name] = as_form_value(value)
    values["destination"] = destination.pk
    if destination.pk == vm.host_id:
        raise ValidationError({"destination": [f"{vm.name} already runs on {destination.name}; choose another host."]})
    form = MigrationForm(values, vm=vm, features=vm_features(vm), destination=destination)
    form.is_valid()
    return form


def _wait(migration: Migration, request) -> Migration:
    """Hold the request until the migration's state is no longer the one
    given (`?state=`, default: its state now) or it has ended, at most
    `?wait=` seconds (API_MAX_WAIT_S)."""
    raw = request.query_params.get("wait")
    if raw is None:
        return migration
    try:
        seconds = float(raw)
    except ValueError:
        raise ValidationError({"wait": ["Give the seconds to wait as a number, e.g. ?wait=30."]}) from None
    if not 0 <= seconds <= settings.API_MAX_WAIT_S:
        raise ValidationError({"wait": [f"Wait between 0 and {settings.API_MAX_WAIT_S} s."]})
    start_state = request.query_params.get("state") or migration.state
    deadline = time.monotonic() + seconds
    rows = Migration.objects.filter(pk=migration.pk)
    while time.monotonic() < deadline:
        state = rows.values_list("state", flat=True).first()
        if state != start_state or state in FINAL_STATES:
            break
        time.sleep(WAIT_POLL_S)
    migration.refresh_from_db()
    return migration


def _history_form(request) -> HistoryFilterForm:
    params = request.query_params
    form = HistoryFilterForm(params)
    if not form.is_valid():
        raise FormRefused(form_errors(form))
    return form


class MigrationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Migration records. Operators and auditors read them; operators start,
    cancel and steer them."""

    read_roles = (OPERATORS, AUDITORS)
    write_roles = (OPERATORS,)
    serializer_class = MigrationSerializer
    queryset = Migration.objects.all()

    def get_queryset(self):
        if self.action == "list":
            return filter_migrations(_history_form(self.request)).select_related("batch")
        return Migration.objects.all()

    def get_object(self) -> Migration:
        try:
            pk = int(self.kwargs["pk"])
        except ValueError:
            raise NotFound("A migration's id is a whole number.") from None
        return get_object_or_404(Migration, pk=pk)

    @extend_schema(
        summary="List migrations",
        parameters=[
            OpenApiParameter(name, description=str(field.help_text or field.label or name))
            for name, field in HistoryFilterForm.base_fields.items()
        ],
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="A migration, with its samples; ?wait=N holds the answer until its state changes",
        parameters=[
            OpenApiParameter("wait", OpenApiTypes.NUMBER, description="Seconds to wait for a state change."),
            OpenApiParameter("state", description="Wait until the state differs from this one (default: now)."),
            OpenApiParameter("samples", OpenApiTypes.BOOL, description="0 leaves the samples out."),
        ],
        responses=MigrationDetailSerializer,
    )
    def retrieve(self, request, *args, **kwargs):
        migration = _wait(self.get_object(), request)
        with_samples = request.query_params.get("samples", "1") not in ("0", "false", "no")
        return Response(MigrationDetailSerializer(migration, context={"samples": with_samples}).data)

    @extend_schema(
        summary="Start a migration (the wizard's form, pre-checks and prediction)",
        request=MigrationRequestSerializer,
        responses={201: MigrationDetailSerializer, 400: MessageSerializer, 409: MessageSerializer},
        parameters=[
            OpenApiParameter(
                idempotency.HEADER,
                location=OpenApiParameter.HEADER,
                description="Any unique string: a retry with the same key does not start a second migration.",
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        return idempotency.once(request, "migrations.create", lambda: self._create(request))

    def _create(self, request) -> Response:
        form = migration_form(request)
        if form.errors:
            raise FormRefused(form_errors(form))
        vm, destination, parameters = form.vm, form.cleaned_data["destination"], form.parameters()
        try:
            migration = queue_migration(
                vm=vm,
                destination=destination,
                parameters=parameters,
                report=form.report,
                user=request.user,
                client_address=client_address(request),
                prediction=predict_for(vm, destination, parameters),
                not_before=form.scheduled_start,
            )
        except IntegrityError:
            existing = Migration.objects.active().for_vm(vm.uuid).first()
            number = f" (migration #{existing.pk}, /api/v1/migrations/{existing.pk}/)" if existing else ""
            return refused(f"{vm.name} is already being migrated{number}.")
        AuditEvent.record(
            "migration.started",
            actor=request.user,
            obj=migration,
            details={
                "vm": vm.name,
                "source": vm.host.name,
                "destination": destination.name,
                "parameters": migration.parameters,
                "via": "API",
            },
            client_address=client_address(request),
        )
        response = Response(MigrationDetailSerializer(migration).data, status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/migrations/{migration.pk}/"
        return response

    def _act(self, request, do) -> Response:
        migration = self.get_object()
        try:
            message = do(migration)
        except actions.ActionRefused as error:
            return refused(str(error))
        migration.refresh_from_db()
        return Response({"detail": message, "migration": MigrationSerializer(migration).data})

    @extend_schema(summary="Cancel a migration", request=None, responses={200: MessageSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._act(request, lambda m: actions.request_cancel(m, requester(request)))

    @extend_schema(
        summary="Steer a running migration: bandwidth, max downtime, post-copy, force complete",
        request=ActionRequestSerializer,
        responses={200: MessageSerializer, 409: MessageSerializer},
    )
    @action(detail=True, methods=["post"])
    def actions(self, request, pk=None):
        body = ActionRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)

        def do(migration: Migration) -> str:
            done = actions.request_action(
                migration, body.validated_data["kind"], body.validated_data.get("value"), requester(request)
            )
            return f"{done.label.capitalize()} asked; the worker applies it within a second."

        return self._act(request, do)

    @extend_schema(summary="Resume an interrupted post-copy", request=None, responses={200: MessageSerializer})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        def do(migration: Migration) -> str:
            actions.request_resume(migration, requester(request))
            return "Resume asked: a worker takes it up."

        return self._act(request, do)


class PrecheckView(APIView):
    """The wizard's pre-checks for a VM, a destination and parameters,
    without starting anything."""

    read_roles = write_roles = (OPERATORS,)

    @extend_schema(
        summary="Pre-check a migration", request=MigrationRequestSerializer, responses=PrecheckResultSerializer
    )
    def post(self, request):
        form = migration_form(request)
        report = form.report
        return Response(
            {
                "ok": not form.errors,
                "verdict": report.verdict if report else "",
                "checks": report.as_list() if report else [],
                "errors": form_errors(form),
            }
        )


class PredictionView(APIView):
    """What the planner predicts for these parameters, and for each policy."""

    read_roles = write_roles = (OPERATORS,)

    @extend_schema(
        summary="Predict a migration",
        request=MigrationRequestSerializer,
        responses=inline_serializer(
            "Prediction", {"prediction": serializers.DictField(), "policies": serializers.ListField()}
        ),
    )
    def post(self, request):
        form = migration_form(request)
        if form.errors:
            raise FormRefused(form_errors(form))
        parameters = form.parameters()
        vm, destination = form.vm, form.cleaned_data["destination"]
        prediction = predict_for(vm, destination, parameters)
        return Response(
            {
                "prediction": prediction,
                "policies": policies.predict_all(vm, destination, form.raw_parameters(), parameters.policy),
            }
        )


class DirtyRateView(APIView):
    """A VM's dirty-rate readings (newest first; every role), and starting a
    measurement (operators)."""

    read_roles = ()
    write_roles = (OPERATORS,)

    @extend_schema(
        summary="A VM's dirty-rate readings",
        parameters=[OpenApiParameter("limit", OpenApiTypes.INT, description="At most this many (default 200).")],
        responses=inline_serializer(
            "DirtyRateReadings", {"vm": serializers.IntegerField(), "readings": serializers.ListField()}
        ),
    )
    def get(self, request, pk: int):
        vm = get_object_or_404(VirtualMachine, pk=pk)
        try:
            limit = min(max(int(request.query_params.get("limit", 200)), 1), 5000)
        except ValueError:
            raise ValidationError({"limit": ["Give a whole number of readings."]}) from None
        rows = DirtyRateMeasurement.objects.filter(vm_uuid=vm.uuid)[:limit]
        return Response({"vm": vm.pk, "vm_name": vm.name, "readings": [r.as_dict() for r in rows]})

    @extend_schema(
        summary="Measure a VM's dirty rate",
        request=inline_serializer(
            "DirtyRateRequest",
            {
                "window_s": serializers.IntegerField(),
                "duration_s": serializers.IntegerField(),
                "curve": serializers.BooleanField(required=False),
            },
        ),
        responses={
            202: inline_serializer(
                "DirtyRateStarted", {"detail": serializers.CharField(), "series": serializers.CharField()}
            )
        },
    )
    def post(self, request, pk: int):
        vm = get_object_or_404(VirtualMachine.objects.select_related("host"), pk=pk)
        values = {name: as_form_value(value) for name, value in request.data.items() if value is not False}
        form = dirtyrate.DirtyRateForm(values)
        error = dirtyrate.refusal(vm)
        if error:
            return refused(error)
        if not form.is_valid():
            raise FormRefused(form_errors(form))
        window, duration = form.cleaned_data["window_s"], form.cleaned_data["duration_s"]
        series = dirtyrate.start_measurement(vm, window, duration, request.user.username, form.cleaned_data["curve"])
        AuditEvent.record(
            "vm.dirty_rate_measured",
            actor=request.user,
            obj=vm,
            details={"window_s": window, "duration_s": duration, "via": "API"},
            client_address=client_address(request),
        )
        return Response(
            {"detail": f"Measuring {vm.name}'s dirty rate: {window} s windows for {duration} s.", "series": series},
            status=status.HTTP_202_ACCEPTED,
        )


router = SimpleRouter()
router.register("migrations", MigrationViewSet, basename="migrations")
urlpatterns = [
    *router.urls,
    path("prechecks/", PrecheckView.as_view(), name="prechecks"),
    path("predictions/", PredictionView.as_view(), name="predictions"),
    path("vms/<int:pk>/dirty-rate/", DirtyRateView.as_view(), name="vm-dirty-rate"),
]
