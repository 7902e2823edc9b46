"""Evacuations and bulk moves through the API: a host's plan (a dry run
that writes nothing), starting it as a batch, the batch with its report of
predicted against actual, cancelling it, and taking a host out of
maintenance. The same planner, queue, limits and audit as the host page."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from hosts.models import Host

from .. import policies
from ..fleet import batches
from ..fleet.models import Batch, BatchKind
from ..planning.evacuation import Plan, plan_evacuation
from ..roles import AUDITORS, OPERATORS
from . import idempotency
from .errors import refused
from .lookups import host_named, requester
from .serializers import BatchSerializer, MessageSerializer


class PlanRequestSerializer(serializers.Serializer):
    policy = serializers.ChoiceField(
        choices=list(policies.POLICIES), required=False, help_text="The migration policy of every step."
    )
    vms = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="A bulk move: these VMs of the host (ids). Empty: evacuate every running VM.",
    )
    destination = serializers.CharField(
        required=False, help_text="A bulk move's one destination (id or name); empty or 'best': the planner's."
    )


class BatchRequestSerializer(PlanRequestSerializer):
    source = serializers.CharField(help_text="The host to empty (id or name).")
    start_at = serializers.CharField(
        required=False, allow_blank=True, help_text="ISO 8601; empty: now. A time without a zone is the server's."
    )


def _plan(source: Host, body: dict[str, Any]) -> tuple[Plan, str]:
    """The plan for the body's policy, VMs and destination, and the batch's kind."""
    policy = body.get("policy") or policies.MINIMAL_DOWNTIME
    ids = body.get("vms") or []
    vms = None
    if ids:
        vms = list(source.vms.filter(pk__in=ids))
        if len(vms) != len(set(ids)):
            missing = sorted(set(ids) - {vm.pk for vm in vms})
            raise ValidationError(
                {
                    "vms": [
                        f"VM ids {missing} do not run on {source.name}; list them with /api/v1/vms/?host={source.pk}."
                    ]
                }
            )
    target = str(body.get("destination") or "best")
    destinations = None
    if target != "best":
        destination = host_named(target)
        if destination.pk == source.pk:
            raise ValidationError({"destination": ["Choose a destination other than the source, or 'best'."]})
        destinations = [destination]
    kind = BatchKind.BULK if vms else BatchKind.EVACUATION
    return plan_evacuation(source, destinations=destinations, policy=policy, vms=vms), kind


class PlanView(APIView):
    """A host's evacuation (or bulk move) plan: where each VM would go, in
    what order, how long it should take, and why a VM cannot move. Nothing
    is changed."""

    read_roles = write_roles = (OPERATORS,)

    @extend_schema(
        summary="Plan an evacuation or a bulk move (a dry run)",
        request=PlanRequestSerializer,
        responses=inline_serializer("EvacuationPlan", {"plan": serializers.DictField()}),
    )
    def post(self, request, pk: int):
        source = get_object_or_404(Host, pk=pk)
        body = PlanRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        plan, kind = _plan(source, body.validated_data)
        return Response({"kind": kind, "plan": plan.as_dict()})


class LeaveMaintenanceView(APIView):
    read_roles = write_roles = (OPERATORS,)

    @extend_schema(summary="Take a host out of maintenance", request=None, responses=MessageSerializer)
    def post(self, request, pk: int):
        host = get_object_or_404(Host, pk=pk)
        if batches.leave_maintenance(host, requester(request)):
            return Response({"detail": f"{host.name} left maintenance: migrations may go to it again."})
        return Response({"detail": f"{host.name} was not in maintenance."})


def batch_body(batch: Batch) -> dict[str, Any]:
    """A batch with its report, row by row, as the batch page shows it."""
    report = batches.report(batch)
    return {
        **BatchSerializer(batch).data,
        "report": {
            "done": report.done,
            "succeeded": report.succeeded,
            "left_on_source": report.left_on_source,
            "predicted_total_s": report.predicted_total_s,
            "actual_total_s": report.actual_total_s,
            "unmovable": report.unmovable,
            "rows": [
                {
                    "vm_name": row.vm_name,
                    "destination": row.destination,
                    "state": row.state,
                    "predicted_s": row.predicted_s,
                    "actual_s": row.actual_s,
                    "predicted_downtime_ms": row.predicted_downtime_ms,
                    "actual_downtime_ms": row.actual_downtime_ms,
                    "vm_location": row.vm_location,
                    "migration": row.migration.pk if row.migration else None,
                    "note": row.note,
                }
                for row in report.rows
            ],
        },
    }


class BatchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Evacuations and bulk moves. Operators and auditors read them;
    operators start and cancel them."""

    read_roles = (OPERATORS, AUDITORS)
    write_roles = (OPERATORS,)
    serializer_class = BatchSerializer
    queryset = Batch.objects.order_by("-pk")

    @extend_schema(summary="A batch with its report of predicted against actual")
    def retrieve(self, request, *args, **kwargs):
        return Response(batch_body(self.get_object()))

    @extend_schema(
        summary="Start an evacuation or a bulk move (plans it, then queues each step)",
        request=BatchRequestSerializer,
        responses={201: BatchSerializer, 409: MessageSerializer},
    )
    def create(self, request, *args, **kwargs):
        return idempotency.once(request, "batches.create", lambda: self._create(request))

    def _create(self, request) -> Response:
        body = BatchRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        source = host_named(body.validated_data["source"], "source")
        try:
            not_before = batches.parse_start_at(body.validated_data.get("start_at") or "")
        except ValueError as error:
            raise ValidationError({"start_at": [str(error)]}) from None
        plan, kind = _plan(source, body.validated_data)
        try:
            batch = batches.start(source, plan, requester(request), kind=kind, not_before=not_before)
        except batches.BatchRefused as error:
            return refused(str(error))
        response = Response(batch_body(batch), status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/batches/{batch.pk}/"
        return response

    @extend_schema(
        summary="Cancel a batch: its waiting migrations, and its running ones with cancel_running",
        request=inline_serializer("BatchCancel", {"cancel_running": serializers.BooleanField(required=False)}),
        responses={200: MessageSerializer, 409: MessageSerializer},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        batch = self.get_object()
        cancel_running = serializers.BooleanField().to_internal_value(request.data.get("cancel_running", False))
        try:
            said = batches.cancel(batch, requester(request), cancel_running=cancel_running)
        except batches.BatchRefused as error:
            return refused(str(error))
        return Response({"detail": said})


router = SimpleRouter()
router.register("batches", BatchViewSet, basename="batches")
urlpatterns = [
    *router.urls,
    path("hosts/<int:pk>/evacuation-plan/", PlanView.as_view(), name="host-evacuation-plan"),
    path("hosts/<int:pk>/leave-maintenance/", LeaveMaintenanceView.as_view(), name="host-leave-maintenance"),
]
