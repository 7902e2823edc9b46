"""The audit log through the API, for auditors, read only: the events with
the audit page's filters (newest first, a cursor per page so that events
recorded meanwhile neither repeat nor shift rows), one event, and the check
`manage.py verify_audit` makes (the keyed chain, then the newest anchor).
Nothing here writes, not even an audit event of its own reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from ..audit import anchor, chain, guard
from ..audit.models import AuditEvent
from ..audit.verify import anchor_mismatch, first_broken_link
from ..history import AuditFilterForm, filter_audit_events
from ..history_views import object_links
from ..management.commands.verify_audit import STALE_INTERVALS
from ..roles import AUDITORS
from .errors import FormRefused, form_errors


class AuditEventSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    actor = serializers.CharField(source="actor_username", help_text="Username at the time; empty: the system.")
    object_page = serializers.SerializerMethodField(
        help_text="Where the object can be seen in the browser, while it exists; else null."
    )

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "url",
            "at",
            "actor",
            "client_address",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "object_page",
            "details",
            "prev_hash",
            "hash",
        ]

    def get_url(self, event: AuditEvent) -> str:
        return f"/api/v1/audit/{event.pk}/"

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_object_page(self, event: AuditEvent) -> str | None:
        return self.context.get("links", {}).get((event.object_type, event.object_id))


class AuditPagination(CursorPagination):
    """Newest first by id: the order events were chained in, which rows
    recorded between two pages do not disturb."""

    ordering = "-pk"
    page_size_query_param = "page_size"
    max_page_size = 1000


def _filter_form(request) -> AuditFilterForm:
    form = AuditFilterForm(request.query_params)
    if not form.is_valid():
        raise FormRefused(form_errors(form))
    return form


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The audit log: auditors (and superusers) read it. No write method is
    routed: a write is a 405 to auditors and a 403 to the other roles."""

    read_roles = (AUDITORS,)
    serializer_class = AuditEventSerializer
    pagination_class = AuditPagination
    queryset = AuditEvent.objects.all()

    def get_queryset(self):
        if self.action == "list":
            return filter_audit_events(_filter_form(self.request))
        return AuditEvent.objects.all()

    def get_object(self) -> AuditEvent:
        try:
            pk = int(self.kwargs["pk"])
        except ValueError:
            raise NotFound("An audit event's id is a whole number.") from None
        return get_object_or_404(AuditEvent, pk=pk)

    def _context(self, events: list[AuditEvent]) -> dict[str, Any]:
        return {**self.get_serializer_context(), "links": object_links(events, self.request.user)}

    @extend_schema(
        summary="List audit events, newest first (the audit page's filters; ?cursor= pages)",
        parameters=[
            OpenApiParameter(name, description=str(field.help_text or field.label or name))
            for name, field in AuditFilterForm.base_fields.items()
        ],
    )
    def list(self, request, *args, **kwargs):
        events = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        data = AuditEventSerializer(events, many=True, context=self._context(events)).data
        return self.get_paginated_response(data)

    @extend_schema(summary="An audit event")
    def retrieve(self, request, *args, **kwargs):
        event = self.get_object()
        return Response(AuditEventSerializer(event, context=self._context([event])).data)


class BrokenLinkSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="The first event that does not verify.")
    problem = serializers.CharField()


class AnchorCheckSerializer(serializers.Serializer):
    checked = serializers.BooleanField(help_text="An anchor of this database was found and read.")
    ok = serializers.BooleanField(allow_null=True, help_text="null: no anchor to check against.")
    file = serializers.CharField(allow_null=True)
    taken_at = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class AuditVerificationSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="The chain is intact and the newest anchor (if any) holds.")
    count = serializers.IntegerField(help_text="Events checked (up to and including the first broken one).")
    intact = serializers.IntegerField(help_text="Events checked before the first broken link.")
    scheme = serializers.CharField()
    first_broken = BrokenLinkSerializer(allow_null=True)
    anchor = AnchorCheckSerializer()
    problems = serializers.ListField(child=serializers.CharField(), help_text="Each failure, in plain words.")
    warnings = serializers.ListField(child=serializers.CharField())
    message = serializers.CharField(help_text="The one-line summary verify_audit ends with.")


def _anchor_check(problems: list[str], warnings: list[str]) -> dict[str, Any]:
    """The newest anchor of this database against the log, as verify_audit checks it."""
    found_path = anchor.newest_file()
    if found_path is None:
        message = (
            f"No anchor of this database in {anchor.directory()}, so the newest events could have been deleted "
            f"unnoticed. `manage.py audit_anchor` writes one; a running worker writes one every "
            f"{settings.AUDIT_ANCHOR_INTERVAL_S} s."
        )
        warnings.append(message)
        return {"checked": False, "ok": None, "file": None, "taken_at": None, "message": message}
    result = {"checked": True, "ok": False, "file": found_path.name, "taken_at": None}
    try:
        found = anchor.load(found_path)
    except anchor.AnchorError as error:
        problems.append(str(error))
        return {**result, "message": str(error)}
    result["taken_at"] = found.at
    age = datetime.now(UTC) - found.taken_at
    if age > STALE_INTERVALS * timedelta(seconds=settings.AUDIT_ANCHOR_INTERVAL_S):
        warnings.append(
            f"The newest anchor is {int(age.total_seconds() // 60)} min old (the worker writes one every "
            f"{settings.AUDIT_ANCHOR_INTERVAL_S} s: is it running?); events since then are covered by the chain alone."
        )
    mismatch = anchor_mismatch(found)
    if mismatch:
        problems.append(f"Anchor check failed: {mismatch}")
        return {**result, "message": mismatch}
    return {**result, "ok": True, "message": f"Taken {found.at}: {found.describe()}, all still in the log."}


def verification() -> dict[str, Any]:
    """What `manage.py verify_audit` finds, as data."""
    problems: list[str] = []
    warnings: list[str] = []
    count, broken = first_broken_link()
    first_broken = None
    if broken:
        problems.append(f"Audit chain broken after {count - 1} intact events. {broken}")
        # The count-th event in insertion order; later appends do not move it.
        pk = AuditEvent.objects.order_by("pk").values_list("pk", flat=True)[count - 1 : count].first()
        first_broken = {"id": pk, "problem": broken}
    checked = _anchor_check(problems, warnings)
    triggers = guard.problems(connection)
    if triggers:
        warnings.append(
            f"The audit table's triggers are {'; '.join(triggers)}: raw UPDATE and DELETE are not refused "
            "(manage.py migrate puts them back)."
        )
    if problems:
        message = " ".join(problems)
    else:
        held = f"anchor of {checked['taken_at']} holds" if checked["ok"] else "no anchor checked"
        message = f"{count} events, chain intact ({chain.SCHEME}); {held}."
    return {
        "ok": not problems,
        "count": count,
        "intact": count - 1 if broken else count,
        "scheme": chain.SCHEME,
        "first_broken": first_broken,
        "anchor": checked,
        "problems": problems,
        "warnings": warnings,
        "message": message,
    }


class AuditVerifyView(APIView):
    """Whether the audit log is as it was written: auditors (and superusers)."""

    read_roles = (AUDITORS,)

    @extend_schema(
        summary="Verify the audit log: its keyed hash chain, then its newest signed anchor",
        responses=AuditVerificationSerializer,
    )
    def get(self, request):
        return Response(verification())


router = SimpleRouter()
router.register("audit", AuditEventViewSet, basename="audit")
urlpatterns = [
    # Before the router's audit/<pk>/.
    path("audit/verify/", AuditVerifyView.as_view(), name="audit-verify"),
    *router.urls,
]
