"""Forms for the certificate store: uploads and a host's TLS assignment.

All the checking of the material itself happens in ``store.prepare_upload``
(and ``policy`` below it); the forms turn its CertificateProblem into an error
on the field it belongs to.
"""

from __future__ import annotations

from django import forms

from hosts.models import Host

from . import store
from .errors import CertificateProblem
from .models import Certificate, CertificateKind, HostTLS
from .pem import check_size

# CertificateProblem.field -> form field (policy says "addresses" for the
# host's addresses, which come from the chosen host here).
PROBLEM_FIELDS = {"addresses": "host"}


class CertificateChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Certificate) -> str:
        return f"{obj.name} — {obj.subject} (until {obj.not_after:%Y-%m-%d})"


class HostsChoiceField(forms.ModelMultipleChoiceField):
    """Host choices whose values are checked as primary keys before the
    database sees them (a number beyond 64 bits is an error, not a crash)."""

    def _check_values(self, value):
        for pk in value:
            text = str(pk).strip()
            if not text.lstrip("-").isdigit() or not -(2**63) <= int(text) < 2**63:
                raise forms.ValidationError(
                    self.error_messages["invalid_pk_value"], code="invalid_pk_value", params={"pk": text[:20]}
                )
        return super()._check_values(value)


class ProblemFormMixin:
    def add_problem(self, problem: CertificateProblem) -> None:
        name = PROBLEM_FIELDS.get(problem.field, problem.field)
        self.add_error(name if name in self.fields else None, problem.message)


class CertificateUploadForm(ProblemFormMixin, forms.Form):
    kind = forms.ChoiceField(
        choices=CertificateKind.choices,
        widget=forms.RadioSelect,
        help_text="CA: the authority that signs the hosts' and the dashboard's certificates. Client: the "
        "dashboard's own certificate and key for qemu+tls:// connections. Migration server certificate: the "
        "certificate QEMU and libvirtd use on one host (server-cert.pem; its key stays on the host).",
    )
    name = forms.CharField(
        max_length=200, required=False, help_text="A name to recognise it by. Empty: the certificate's common name."
    )
    cert = forms.FileField(label="Certificate (PEM)", help_text="One certificate, -----BEGIN CERTIFICATE-----.")
    key = forms.FileField(
        label="Private key (PEM)",
        required=False,
        help_text="Client certificates only. Stored encrypted; it is never shown or downloadable again.",
    )
    passphrase = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Only if the private key is encrypted. Not stored: the key is stored encrypted our way.",
    )
    ca = CertificateChoiceField(
        queryset=Certificate.objects.none(),
        required=False,
        label="Issued by CA",
        help_text="Client and server certificates: the CA that signed it (upload the CA first). CAs: leave empty.",
    )
    host = forms.ModelChoiceField(
        queryset=Host.objects.all(),
        required=False,
        help_text="Migration server certificates: the host it is deployed on. Its migration address must be "
        "among the certificate's names.",
    )
    replaces = CertificateChoiceField(
        queryset=Certificate.objects.none(),
        required=False,
        help_text="When renewing: the certificate this one replaces. Hosts using it switch to the new one, and "
        "the old key is destroyed. A host's new migration certificate always replaces its current one.",
    )
    assign_hosts = HostsChoiceField(
        queryset=Host.objects.all(),
        required=False,
        label="Use for hosts",
        widget=forms.CheckboxSelectMultiple,
        help_text="Client certificates: the dashboard connects to these hosts' qemu+tls:// URIs with this "
        "certificate and its CA.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["ca"].queryset = Certificate.objects.cas()
        self.fields["replaces"].queryset = Certificate.objects.active().exclude(kind=CertificateKind.SERVER)
        self.prepared: store.PreparedUpload | None = None

    def _read(self, name: str, what: str) -> bytes | None:
        upload = self.cleaned_data.get(name)
        if not upload:
            return None
        try:
            # Checked on the size Django reports, before reading a byte of it.
            check_size(upload.size, what, name, store.max_upload_bytes())
        except CertificateProblem as problem:
            self.add_problem(problem)
            return None
        upload.seek(0)
        return upload.read()

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        cert_pem = self._read("cert", "certificate")
        key_pem = self._read("key", "private key")
        if self.errors:
            return cleaned
        try:
            self.prepared = store.prepare_upload(
                cleaned["kind"],
                cert_pem,
                key_pem,
                cleaned.get("passphrase") or None,
                ca=cleaned.get("ca"),
                host=cleaned.get("host"),
                replaces=cleaned.get("replaces"),
                assign_hosts=cleaned.get("assign_hosts") or (),
                name=cleaned.get("name") or "",
            )
        except CertificateProblem as problem:
            self.add_problem(problem)
        return cleaned

    def save(self, *, user, client_address: str | None = None) -> Certificate:
        """Raises CertificateProblem when the upload lost a race (the caller adds it to the form)."""
        assert self.prepared is not None, "save() after is_valid()"
        return store.save_upload(self.prepared, user=user, client_address=client_address)


class HostTLSForm(ProblemFormMixin, forms.Form):
    ca = CertificateChoiceField(
        queryset=Certificate.objects.none(),
        required=False,
        label="CA certificate",
        help_text="libvirt checks the host's certificate against this CA (cacert.pem).",
    )
    client = CertificateChoiceField(
        queryset=Certificate.objects.none(),
        required=False,
        label="Client certificate + key",
        help_text="The dashboard's identity towards the host's libvirtd (clientcert.pem, clientkey.pem). "
        "Leave both empty to use libvirt's default files in /etc/pki.",
    )

    def __init__(self, *args, host: Host, **kwargs) -> None:
        self.host = host
        current = HostTLS.objects.filter(host=host).first()
        if current is not None:
            kwargs.setdefault("initial", {"ca": current.ca_id, "client": current.client_id})
        super().__init__(*args, **kwargs)
        self.fields["ca"].queryset = Certificate.objects.cas()
        self.fields["client"].queryset = Certificate.objects.clients()

    def clean(self) -> dict:
        cleaned = super().clean()
        ca, client = cleaned.get("ca"), cleaned.get("client")
        if self.errors or (ca is None and client is None):
            return cleaned
        if ca is None or client is None:
            self.add_error(
                "ca" if ca is None else "client",
                "Choose both the CA and the client certificate, or neither (libvirt's default files).",
            )
        elif client.ca_id != ca.pk:
            self.add_error(
                "client",
                f"The client certificate '{client.name}' was issued by '{client.issuer}', not by the CA '{ca.name}'; "
                "choose the CA that issued it.",
            )
        return cleaned

    def save(self, *, user, client_address: str | None = None):
        return store.assign_host_tls(
            self.host,
            self.cleaned_data.get("ca"),
            self.cleaned_data.get("client"),
            user=user,
            client_address=client_address,
        )
