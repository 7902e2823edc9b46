"""Pages of the certificate store: security admins only (superusers hold every role)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.audit.requests import client_address
from migrator.roles import SECURITY_ADMINS, role_required

from . import store
from .errors import CertificateProblem
from .forms import CertificateUploadForm, HostTLSForm
from .models import Certificate, CertificateKind, HostTLS
from .readiness import expiry_warnings

# Audit events written before the certificates became an app of their own name
# the model by its old label; the audit log is append-only, so they keep it.
_AUDITED_AS = (Certificate._meta.label_lower, "hosts.certificate")


@role_required(SECURITY_ADMINS)
def certificate_list(request):
    current = Certificate.objects.active().select_related("ca", "host", "replaces")
    rows = [(cert, cert.served_hosts()) for cert in current]
    retired = Certificate.objects.filter(active=False).select_related("host").prefetch_related("replacements")
    material = {row.host_id: row for row in HostTLS.objects.select_related("ca", "client")}
    server = {c.host_id: c for c in current if c.kind == CertificateKind.SERVER and c.host_id}
    hosts = [(host, material.get(host.pk), server.get(host.pk)) for host in Host.objects.all()]
    return render(
        request,
        "certificates/list.html",
        {"rows": rows, "retired": retired, "hosts": hosts, "warnings": expiry_warnings()},
    )


@role_required(SECURITY_ADMINS)
def certificate_upload(request):
    initial = {key: request.GET[key] for key in ("kind", "host", "replaces", "ca") if request.GET.get(key)}
    form = CertificateUploadForm(request.POST or None, request.FILES or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            cert = form.save(user=request.user, client_address=client_address(request))
        except CertificateProblem as problem:
            form.add_problem(problem)
        else:
            verb = f"Replaced {cert.replaces.name} with" if cert.replaces_id else "Uploaded"
            messages.success(request, f"{verb} {cert}.")
            for warning in cert.warnings:
                messages.warning(request, warning)
            return redirect(cert)
    return render(request, "certificates/upload.html", {"form": form})


@role_required(SECURITY_ADMINS)
def certificate_detail(request, pk: int):
    cert = get_object_or_404(Certificate.objects.select_related("ca", "host", "replaces"), pk=pk)
    events = AuditEvent.objects.filter(object_type__in=_AUDITED_AS, object_id=str(cert.pk))
    context = {
        "cert": cert,
        "served": cert.served_hosts(),
        "replacements": cert.replacements.all(),
        "issued": cert.issued.filter(active=True) if cert.kind == CertificateKind.CA else [],
        "events": events[:50],
    }
    return render(request, "certificates/detail.html", context)


@require_POST
@role_required(SECURITY_ADMINS)
def certificate_remove(request, pk: int):
    cert = get_object_or_404(Certificate, pk=pk)
    try:
        store.remove_certificate(cert, user=request.user, client_address=client_address(request))
    except CertificateProblem as problem:
        messages.error(request, problem.message)
        return redirect(cert)
    messages.success(request, f"Removed {cert}; its private key (if any) is gone from the database.")
    return redirect("hosts:certificates")


@role_required(SECURITY_ADMINS)
def certificate_assign(request, host_pk: int):
    host = get_object_or_404(Host, pk=host_pk)
    form = HostTLSForm(request.POST or None, host=host)
    if request.method == "POST" and form.is_valid():
        try:
            row = form.save(user=request.user, client_address=client_address(request))
        except CertificateProblem as problem:
            form.add_problem(problem)
        else:
            if row is None:
                messages.success(request, f"{host.name} uses libvirt's default TLS files again.")
            else:
                messages.success(request, f"{host.name} now connects with {row.client.name} and the CA {row.ca.name}.")
            if not host.uri.startswith("qemu+tls://"):
                messages.info(request, f"{host.name}'s URI is not qemu+tls://, so this material is not used yet.")
            return redirect("hosts:certificates")
    title = f"TLS material for {host.name}"
    return render(request, "hosts/form.html", {"form": form, "title": title, "host": host})
