"""The certificate store through the API, for security admins: the
certificates on record (what the browser's pages show of them, never a
private key nor its ciphertext), uploads through the browser's upload form
(multipart, the same fields, checks and messages) and removal through the
store, which refuses what is still in use. The store records every change
in the audit log, as it does for the browser."""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

from django import forms
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from hosts.certificates import store
from hosts.certificates.errors import CertificateProblem
from hosts.certificates.forms import CertificateUploadForm
from hosts.certificates.models import Certificate, CertificateKind
from hosts.certificates.policy import EXPIRY_WARNING_DAYS
from hosts.certificates.readiness import expiry_warnings
from hosts.certificates.views import _AUDITED_AS  # the labels its events are recorded under
from hosts.models import Host

from ..audit.models import AuditEvent, recorded_via
from ..audit.requests import client_address
from ..history import YES_NO
from ..roles import SECURITY_ADMINS
from . import idempotency
from .errors import FormRefused, form_errors, refused
from .serializers import MessageSerializer

UPLOAD_FILES = ("cert", "key")
EVENTS_SHOWN = 50  # as many as the certificate's page lists


# ------------------------------------------------------------------ what is returned


class CertificateHostSerializer(serializers.ModelSerializer):
    class Meta:
        model = Host
        fields = ["id", "name"]


KIND_HELP = "ca, client or server (a host's migration server certificate)."


class CertificateRefSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    kind = serializers.ChoiceField(choices=CertificateKind.choices, read_only=True, help_text=KIND_HELP)

    class Meta:
        model = Certificate
        fields = ["id", "name", "kind", "fingerprint_sha256", "url"]

    def get_url(self, cert: Certificate) -> str:
        return f"/api/v1/certificates/{cert.pk}/"


class ExpiryWarningSerializer(serializers.Serializer):
    level = serializers.CharField(help_text="warning, or danger at 7 days and less.")
    days_left = serializers.IntegerField()
    message = serializers.CharField(help_text="The warning the certificates page shows.")


class CertificateSerializer(serializers.ModelSerializer):
    """A certificate as the certificates page lists it. The private key is
    never part of it: `has_private_key` only says whether one is stored
    (encrypted) with it."""

    url = serializers.SerializerMethodField()
    page = serializers.SerializerMethodField()
    kind = serializers.ChoiceField(choices=CertificateKind.choices, read_only=True, help_text=KIND_HELP)
    kind_label = serializers.CharField(source="get_kind_display", read_only=True)
    status = serializers.SerializerMethodField(
        help_text=f"valid; expiring (within {EXPIRY_WARNING_DAYS} days); expired; or replaced (kept for the history)."
    )
    days_left = serializers.IntegerField(
        read_only=True, help_text="Whole days until expiry: 0 on the last day, negative once expired."
    )
    expired = serializers.BooleanField(source="is_expired", read_only=True)
    expiry_level = serializers.CharField(read_only=True, help_text="success, warning (30 days) or danger (7 days).")
    problems = serializers.SerializerMethodField(help_text="What the certificates page warns about it (expiry).")
    has_private_key = serializers.BooleanField(
        source="has_key", read_only=True, help_text="A private key is stored encrypted with it (never shown)."
    )
    ca = CertificateRefSerializer(read_only=True, help_text="The CA on record that issued it.")
    host = CertificateHostSerializer(
        read_only=True, help_text="Migration server certificates: the host it is deployed on."
    )
    served_hosts = serializers.SerializerMethodField(help_text="The hosts that stop working (for TLS) without it.")
    replaces = CertificateRefSerializer(read_only=True)
    uploaded_by = serializers.CharField(source="uploaded_by_username", read_only=True)

    class Meta:
        model = Certificate
        fields = [
            "id",
            "url",
            "page",
            "kind",
            "kind_label",
            "name",
            "subject",
            "common_name",
            "issuer",
            "fingerprint_sha256",
            "sans",
            "not_before",
            "not_after",
            "days_left",
            "expired",
            "expiry_level",
            "status",
            "problems",
            "has_private_key",
            "ca",
            "host",
            "served_hosts",
            "active",
            "replaces",
            "uploaded_by",
            "uploaded_at",
        ]

    def get_url(self, cert: Certificate) -> str:
        return f"/api/v1/certificates/{cert.pk}/"

    def get_page(self, cert: Certificate) -> str:
        return cert.get_absolute_url()

    def get_status(self, cert: Certificate) -> str:
        if not cert.active:
            return "replaced"
        if cert.is_expired:
            return "expired"
        return "expiring" if cert.days_left <= EXPIRY_WARNING_DAYS else "valid"

    @extend_schema_field(ExpiryWarningSerializer(many=True))
    def get_problems(self, cert: Certificate) -> list[dict]:
        warnings = self.context.get("expiry")
        if warnings is None:
            warnings = self.context["expiry"] = {w.certificate.pk: w for w in expiry_warnings()}
        found = warnings.get(cert.pk)
        return [{"level": found.level, "days_left": found.days_left, "message": found.message}] if found else []

    @extend_schema_field(CertificateHostSerializer(many=True))
    def get_served_hosts(self, cert: Certificate) -> list[dict]:
        return CertificateHostSerializer(cert.served_hosts(), many=True).data


class CertificateEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_username")

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor", "action"]


class CertificateDetailSerializer(CertificateSerializer):
    """One certificate, as its page shows it: its extensions and key, what
    replaced it, what it issued, the warnings noted at upload, the
    certificate itself (PEM: public) and its history."""

    replaced_by = CertificateRefSerializer(source="replacements", many=True, read_only=True)
    issued = serializers.SerializerMethodField(help_text="CAs: the current certificates on record it issued.")
    events = serializers.SerializerMethodField(help_text=f"Its audit events, newest first (at most {EVENTS_SHOWN}).")

    class Meta(CertificateSerializer.Meta):
        fields = [
            *CertificateSerializer.Meta.fields,
            "serial_hex",
            "key_usage",
            "extended_key_usage",
            "is_ca",
            "public_key_type",
            "public_key_bits",
            "retired_at",
            "replaced_by",
            "issued",
            "warnings",
            "pem",
            "events",
        ]

    @extend_schema_field(CertificateRefSerializer(many=True))
    def get_issued(self, cert: Certificate) -> list[dict]:
        if cert.kind != CertificateKind.CA:
            return []
        return CertificateRefSerializer(cert.issued.filter(active=True), many=True).data

    @extend_schema_field(CertificateEventSerializer(many=True))
    def get_events(self, cert: Certificate) -> list[dict]:
        events = AuditEvent.objects.filter(object_type__in=_AUDITED_AS, object_id=str(cert.pk))[:EVENTS_SHOWN]
        return CertificateEventSerializer(events, many=True).data


# ------------------------------------------------------------------ what is sent


def _upload_field(name: str) -> dict[str, Any]:
    field = CertificateUploadForm.base_fields[name]
    return {"required": field.required, "help_text": str(field.help_text)}


class CertificateUploadSerializer(serializers.Serializer):
    """The upload form's fields, for the schema (the form itself checks them)."""

    kind = serializers.ChoiceField(choices=CertificateKind.choices, **_upload_field("kind"))
    name = serializers.CharField(**_upload_field("name"))
    cert = serializers.FileField(**_upload_field("cert"))
    key = serializers.FileField(**_upload_field("key"))
    passphrase = serializers.CharField(**_upload_field("passphrase"))
    ca = serializers.IntegerField(**_upload_field("ca"))
    host = serializers.IntegerField(**_upload_field("host"))
    replaces = serializers.IntegerField(**_upload_field("replaces"))
    assign_hosts = serializers.ListField(child=serializers.IntegerField(), **_upload_field("assign_hosts"))


class CertificateFilterForm(forms.Form):
    kind = forms.ChoiceField(required=False, choices=[("", "any kind"), *CertificateKind.choices])
    active = forms.ChoiceField(
        required=False, choices=YES_NO, help_text="yes: the current certificates; no: the replaced ones (history)."
    )


class _UploadDigest:
    """The request as idempotency.once sees it, with a body digest that
    covers the files' contents (a multipart body's files would otherwise be
    digested by their names alone)."""

    def __init__(self, request) -> None:
        self._request = request

    def __getattr__(self, name: str):
        return getattr(self._request, name)

    @cached_property
    def data(self) -> dict[str, Any]:
        body: dict[str, Any] = {name: self._request.POST.getlist(name) for name in self._request.POST}
        for name, upload in self._request.FILES.items():
            digest = hashlib.sha256()
            for chunk in upload.chunks():
                digest.update(chunk)
            upload.seek(0)
            body[f"{name} (file)"] = digest.hexdigest()
        return body


def _upload_form(request) -> CertificateUploadForm:
    """The browser's upload form, bound to the multipart body, validated."""
    sent = set(request.POST) | set(request.FILES)
    unknown = sorted(sent - set(CertificateUploadForm.base_fields))
    if unknown:
        fields = ", ".join(CertificateUploadForm.base_fields)
        raise ValidationError({name: [f"Unknown field; the fields are {fields}."] for name in unknown})
    as_text = [name for name in UPLOAD_FILES if name in request.POST and name not in request.FILES]
    if as_text:
        raise ValidationError(
            {
                name: [f"Send {name} as a file part of the multipart body (curl -F {name}=@{name}.pem)."]
                for name in as_text
            }
        )
    form = CertificateUploadForm(request.POST, request.FILES)
    form.is_valid()
    return form


def _certificates():
    return Certificate.objects.select_related("ca", "host", "replaces")


class CertificateViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The certificate store: security admins (and superusers) only."""

    read_roles = write_roles = (SECURITY_ADMINS,)
    serializer_class = CertificateSerializer
    queryset = Certificate.objects.all()
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        if self.action != "list":
            return _certificates()
        form = CertificateFilterForm(self.request.query_params)
        if not form.is_valid():
            raise FormRefused(form_errors(form))
        rows = _certificates()
        if form.cleaned_data["kind"]:
            rows = rows.filter(kind=form.cleaned_data["kind"])
        if form.cleaned_data["active"]:
            rows = rows.filter(active=form.cleaned_data["active"] == "yes")
        # The current ones first, soonest to expire first, as the page lists them.
        return rows.order_by("-active", "not_after", "pk")

    def get_object(self) -> Certificate:
        try:
            pk = int(self.kwargs["pk"])
        except ValueError:
            raise NotFound("A certificate's id is a whole number.") from None
        return get_object_or_404(_certificates(), pk=pk)

    def get_serializer_context(self) -> dict:
        # One look at the expiry warnings for the whole answer.
        return {**super().get_serializer_context(), "expiry": {w.certificate.pk: w for w in expiry_warnings()}}

    @extend_schema(
        summary="List the certificates on record (current first, then the replaced ones)",
        parameters=[
            OpenApiParameter(name, description=str(field.help_text or field.label or name))
            for name, field in CertificateFilterForm.base_fields.items()
        ],
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="A certificate, with its history", responses=CertificateDetailSerializer)
    def retrieve(self, request, *args, **kwargs):
        cert = self.get_object()
        return Response(CertificateDetailSerializer(cert, context=self.get_serializer_context()).data)

    @extend_schema(
        summary="Upload a certificate (the upload form's fields and files, multipart/form-data)",
        request={"multipart/form-data": CertificateUploadSerializer},
        responses={201: CertificateDetailSerializer, 400: MessageSerializer},
        parameters=[
            OpenApiParameter(
                idempotency.HEADER,
                location=OpenApiParameter.HEADER,
                description="Any unique string: a retry with the same key and files does not upload twice.",
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        return idempotency.once(_UploadDigest(request), "certificates.create", lambda: self._create(request))

    def _create(self, request) -> Response:
        form = _upload_form(request)
        if form.errors:
            raise FormRefused(form_errors(form))
        try:
            with recorded_via("API"):
                cert = form.save(user=request.user, client_address=client_address(request))
        except CertificateProblem as problem:  # lost a race: as the browser's form says it
            form.add_problem(problem)
            raise FormRefused(form_errors(form)) from None
        cert = _certificates().get(pk=cert.pk)
        response = Response(
            CertificateDetailSerializer(cert, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )
        response["Location"] = f"/api/v1/certificates/{cert.pk}/"
        return response

    @extend_schema(
        summary="Remove a certificate and its encrypted key (refused while hosts or certificates rely on it)",
        responses={200: MessageSerializer, 409: MessageSerializer},
    )
    def destroy(self, request, *args, **kwargs):
        cert = self.get_object()
        try:
            with recorded_via("API"):
                store.remove_certificate(cert, user=request.user, client_address=client_address(request))
        except CertificateProblem as problem:
            return refused(problem.message)
        return Response({"detail": f"Removed {cert}; its private key (if any) is gone from the database."})


router = SimpleRouter()
router.register("certificates", CertificateViewSet, basename="certificates")
urlpatterns = [*router.urls]
