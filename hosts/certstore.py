"""The certificate store: the X.509 material security admins upload, and its use.

Three kinds of certificate are kept (see ``hosts/certificates.py`` for how an
upload is checked): CA certificates; client certificate + key pairs, which the
dashboard presents when it opens ``qemu+tls://`` connections; and each host's
migration server certificate, as deployed on that host (only the certificate:
the host's key never leaves the host).

Private keys are stored encrypted (Fernet) with keys that live outside the
database (``SECRETS_KEYS``, or for the demo a generated ``SECRETS_KEY_FILE``).
They are decrypted only to write the private ``pkipath`` directory libvirt
reads when it opens a TLS connection.

Every change is an audit event: ``certificate.uploaded``,
``certificate.replaced``, ``certificate.assigned`` and ``certificate.removed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from . import certificates
from .certificates import EXPIRY_WARNING_DAYS, CertificateProblem, ValidatedUpload
from .gateway import GatewayError
from .models import Host

log = logging.getLogger(__name__)

#: Certificates this close to expiry (or past it) are shown in red.
EXPIRY_DANGER_DAYS = 7
PKIPATH_FILES = ("cacert.pem", "clientcert.pem", "clientkey.pem")
PASS, WARN, FAIL = "pass", "warn", "fail"


class CertificateKind(models.TextChoices):
    CA = "ca", "CA certificate"
    CLIENT = "client", "Client certificate"
    SERVER = "server", "Migration server certificate"


class CertificateQuerySet(models.QuerySet):
    def active(self) -> CertificateQuerySet:
        return self.filter(active=True)

    def cas(self) -> CertificateQuerySet:
        return self.active().filter(kind=CertificateKind.CA)

    def clients(self) -> CertificateQuerySet:
        return self.active().filter(kind=CertificateKind.CLIENT)

    def expiring_within(self, days: int, now: dt.datetime | None = None) -> CertificateQuerySet:
        now = now or timezone.now()
        return self.active().filter(not_after__lt=now + dt.timedelta(days=days + 1))


class Certificate(models.Model):
    kind = models.CharField(max_length=8, choices=CertificateKind.choices)
    name = models.CharField(max_length=200)
    pem = models.TextField()
    subject = models.TextField()
    common_name = models.CharField(max_length=255, blank=True)
    issuer = models.TextField()
    serial_hex = models.CharField(max_length=80)
    fingerprint_sha256 = models.CharField(max_length=95)
    sans = models.JSONField(default=list, blank=True)
    key_usage = models.JSONField(default=list, blank=True)
    extended_key_usage = models.JSONField(default=list, blank=True)
    is_ca = models.BooleanField(default=False)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    public_key_type = models.CharField(max_length=16)
    public_key_bits = models.PositiveIntegerField(default=0)
    # Fernet token of the PKCS#8 key; never shown, never downloadable.
    encrypted_key = models.BinaryField(null=True, blank=True, editable=False)
    ca = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="issued",
        limit_choices_to={"kind": CertificateKind.CA},
        help_text="The CA on record that issued this certificate.",
    )
    host = models.ForeignKey(
        Host,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="server_certificates",
        help_text="For migration server certificates: the host it is deployed on.",
    )
    replaces = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replacements")
    active = models.BooleanField(default=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_by_username = models.CharField(max_length=150, blank=True)
    uploaded_at = models.DateTimeField(default=timezone.now)

    objects = CertificateQuerySet.as_manager()

    class Meta:
        ordering = ["not_after", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "fingerprint_sha256"],
                condition=Q(active=True),
                name="certificate_on_record_once",
            ),
            models.UniqueConstraint(
                fields=["host"],
                condition=Q(kind="server", active=True),
                name="one_migration_certificate_per_host",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("hosts:certificate_detail", args=[self.pk])

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint_sha256[:23] + "…"

    @property
    def has_key(self) -> bool:
        return self.encrypted_key is not None

    def days_left_at(self, now: dt.datetime | None = None) -> int:
        """Whole days until expiry: 0 on the last day, negative once expired."""
        return (self.not_after - (now or timezone.now())).days

    @property
    def days_left(self) -> int:
        return self.days_left_at()

    @property
    def is_expired(self) -> bool:
        return timezone.now() > self.not_after

    @property
    def expiry_level(self) -> str:
        """Bootstrap colour for the days left: danger at 7 days, warning at 30."""
        days = self.days_left
        if days <= EXPIRY_DANGER_DAYS:
            return "danger"
        if days <= EXPIRY_WARNING_DAYS:
            return "warning"
        return "success"

    def served_hosts(self) -> list[Host]:
        """The hosts that stop working (for TLS) when this certificate does."""
        if self.kind == CertificateKind.SERVER:
            return [self.host] if self.host_id and self.active else []
        if self.kind == CertificateKind.CLIENT:
            return list(Host.objects.filter(tls__client=self))
        hosts = Host.objects.filter(
            Q(tls__ca=self)
            | Q(server_certificates__ca=self, server_certificates__active=True, server_certificates__kind="server")
        )
        return list(hosts.distinct())

    def decrypted_key_pem(self) -> bytes:
        if self.encrypted_key is None:
            raise CertificateProblem(f"{self} has no private key on record.", code="no_private_key")
        return certificates.decrypt_secret(bytes(self.encrypted_key), secret_keys())

    def retire(self, now: dt.datetime | None = None) -> None:
        """Replaced: kept for the history, its private key destroyed."""
        self.active = False
        self.retired_at = now or timezone.now()
        self.encrypted_key = None
        self.save(update_fields=["active", "retired_at", "encrypted_key"])

    def snapshot(self) -> dict:
        """What the audit log keeps about this certificate (nothing secret)."""
        return {
            "certificate_id": self.pk,
            "kind": self.kind,
            "name": self.name,
            "subject": self.subject,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_after": self.not_after.isoformat(),
            "host": self.host.name if self.host_id else None,
            "ca": self.ca.fingerprint_sha256 if self.ca_id else None,
        }


class HostTLS(models.Model):
    """The CA and client pair the dashboard uses for a host's qemu+tls:// URI."""

    host = models.OneToOneField(Host, on_delete=models.CASCADE, related_name="tls")
    ca = models.ForeignKey(Certificate, on_delete=models.PROTECT, related_name="ca_for_hosts")
    client = models.ForeignKey(Certificate, on_delete=models.PROTECT, related_name="client_for_hosts")
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    assigned_by_username = models.CharField(max_length=150, blank=True)
    assigned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "host TLS material"
        verbose_name_plural = "host TLS material"

    def __str__(self) -> str:
        return f"TLS material of {self.host.name}"


# ------------------------------------------------------------------ keys


def secret_keys() -> list[str | bytes]:
    """Keys for private keys at rest: SECRETS_KEYS (first encrypts, all decrypt),
    else the demo's key file, generated on first use."""
    keys = [key for key in getattr(settings, "SECRETS_KEYS", []) or [] if key]
    if keys:
        return keys
    return [certificates.load_or_create_key_file(settings.SECRETS_KEY_FILE)]


def max_upload_bytes() -> int:
    return int(getattr(settings, "CERT_MAX_UPLOAD_BYTES", certificates.DEFAULT_MAX_BYTES))


# ------------------------------------------------------------------ uploads


def host_addresses(host: Host) -> list[str]:
    """The names peers use to reach the host's migration server: its migration
    address, else the host of its peer URI (libvirt's fallback)."""
    if host.migration_address.strip():
        return [host.migration_address.strip()]
    hostname = urlsplit(host.effective_peer_uri).hostname
    return [hostname] if hostname else []


@dataclass
class PreparedUpload:
    """A validated upload, ready to save: nothing in here is plaintext secret."""

    kind: str
    name: str
    validated: ValidatedUpload
    encrypted_key: bytes | None
    ca: Certificate | None = None
    host: Host | None = None
    replaces: Certificate | None = None
    assign_hosts: list[Host] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_upload(
    kind: str,
    cert_pem: bytes,
    key_pem: bytes | None = None,
    passphrase: str | None = None,
    *,
    ca: Certificate | None = None,
    host: Host | None = None,
    replaces: Certificate | None = None,
    assign_hosts: Iterable[Host] = (),
    name: str = "",
    now: dt.datetime | None = None,
) -> PreparedUpload:
    """Check an upload completely; raises CertificateProblem (with the form field
    it belongs to) and stores nothing."""
    if kind not in certificates.CERT_KINDS:
        raise ValueError(f"kind must be one of {certificates.CERT_KINDS}, not {kind!r}")
    assign_hosts = list(assign_hosts)
    label = CertificateKind(kind).label.lower()

    if kind != CertificateKind.CA and ca is None:
        raise CertificateProblem(
            f"Choose the CA that issued this {label}. If it is not in the list, upload that CA certificate first.",
            code="ca_required",
            field="ca",
        )
    if ca is not None and (ca.kind != CertificateKind.CA or not ca.active):
        raise CertificateProblem(
            f"{ca} is not a current CA certificate; choose one from the list.", code="ca_not_on_record", field="ca"
        )
    if kind == CertificateKind.SERVER:
        if host is None:
            raise CertificateProblem(
                "Choose the host this migration certificate is deployed on: its addresses are checked against the "
                "certificate's names.",
                code="host_required",
                field="host",
            )
        if key_pem:
            raise CertificateProblem(
                "Do not upload the host's private key: it stays on the host, where QEMU and libvirtd use it. "
                "Upload the certificate alone.",
                code="server_key_uploaded",
                field="key",
            )
        current = Certificate.objects.active().filter(kind=CertificateKind.SERVER, host=host).first()
        if replaces is None:
            replaces = current
        elif replaces.pk != getattr(current, "pk", None):
            raise CertificateProblem(
                f"{replaces} is not {host.name}'s current migration certificate; a new one for {host.name} "
                f"replaces {current or 'nothing (it has none yet)'}.",
                code="replaces_other_host",
                field="replaces",
            )
    elif host is not None:
        raise CertificateProblem(
            "Only migration server certificates are deployed on a host; leave the host empty for this kind.",
            code="host_not_applicable",
            field="host",
        )
    if assign_hosts and kind != CertificateKind.CLIENT:
        raise CertificateProblem(
            "Only a client certificate (with its CA) is assigned to hosts for qemu+tls:// connections; "
            "leave 'use for hosts' empty for this kind.",
            code="assign_not_applicable",
            field="assign_hosts",
        )
    if replaces is not None and (replaces.kind != kind or not replaces.active):
        raise CertificateProblem(
            f"{replaces} cannot be replaced by a {label}: choose a current certificate of the same kind.",
            code="replaces_wrong_kind",
            field="replaces",
        )

    addresses = host_addresses(host) if host is not None else []
    validated = certificates.validate_upload(
        kind,
        cert_pem,
        key_pem or None,
        passphrase or None,
        ca.pem.encode() if ca is not None else None,
        addresses,
        now,
        max_upload_bytes(),
    )
    info = validated.info
    warnings = list(validated.warnings)
    if kind == CertificateKind.SERVER and not addresses:
        warnings.append(
            f"{host.name} has no migration address, so the certificate's names were not checked; set the host's "
            "migration address and the TLS pre-check will check them."
        )
    duplicate = Certificate.objects.active().filter(kind=kind, fingerprint_sha256=info.sha256_fingerprint).first()
    if duplicate is not None:
        raise CertificateProblem(
            f"This certificate is already on record as '{duplicate.name}' (uploaded "
            f"{duplicate.uploaded_at:%Y-%m-%d} by {duplicate.uploaded_by_username or 'someone'}). "
            "Nothing needs uploading.",
            code="duplicate",
            field="cert",
        )
    encrypted_key = None
    if validated.key_pem_unencrypted is not None:
        encrypted_key = certificates.encrypt_secret(validated.key_pem_unencrypted, secret_keys())
    return PreparedUpload(
        kind=kind,
        name=(name or "").strip() or info.common_name or info.subject,
        validated=validated,
        encrypted_key=encrypted_key,
        ca=ca,
        host=host,
        replaces=replaces,
        assign_hosts=assign_hosts,
        warnings=warnings,
    )


def save_upload(prepared: PreparedUpload, *, user=None, client_address: str | None = None) -> Certificate:
    """Store a prepared upload: the new row, the retirement of what it replaces,
    the moved assignments and the audit events commit together or not at all."""
    info = prepared.validated.info
    with transaction.atomic():
        replaced = None
        if prepared.replaces is not None:
            replaced = Certificate.objects.select_for_update().filter(pk=prepared.replaces.pk, active=True).first()
            if replaced is None:
                raise CertificateProblem(
                    f"{prepared.replaces} was replaced or removed in the meantime; reload the page and choose again.",
                    code="replaced_meanwhile",
                    field="replaces",
                )
            # Before the insert: only one active migration certificate per host.
            replaced.retire()
        cert = Certificate(
            kind=prepared.kind,
            name=prepared.name[:200],
            pem=info.pem,
            subject=info.subject,
            common_name=info.common_name[:255],
            issuer=info.issuer,
            serial_hex=info.serial_hex,
            fingerprint_sha256=info.sha256_fingerprint,
            sans=info.sans,
            key_usage=info.key_usage,
            extended_key_usage=info.extended_key_usage,
            is_ca=info.is_ca,
            not_before=info.not_before,
            not_after=info.not_after,
            public_key_type=info.public_key_type,
            public_key_bits=info.public_key_bits,
            encrypted_key=prepared.encrypted_key,
            ca=prepared.ca,
            host=prepared.host,
            replaces=replaced,
            warnings=prepared.warnings,
            uploaded_by=user if getattr(user, "pk", None) else None,
            uploaded_by_username=getattr(user, "username", "") or "",
        )
        try:
            with transaction.atomic():
                cert.save()
        except IntegrityError:
            raise CertificateProblem(
                "This certificate was uploaded by someone else a moment ago; it is already on record.",
                code="duplicate",
                field="cert",
            ) from None
        details = cert.snapshot()
        if replaced is not None:
            moved = _move_assignments(replaced, cert)
            details |= {"replaced": replaced.snapshot(), "moved_hosts": [h.name for h in moved]}
            _audit("certificate.replaced", cert, user, client_address, details)
            if cert.kind != CertificateKind.SERVER:
                transaction.on_commit(lambda: [forget_material(h) for h in moved])
        else:
            _audit("certificate.uploaded", cert, user, client_address, details)
        for host in prepared.assign_hosts:
            assign_host_tls(host, cert.ca, cert, user=user, client_address=client_address)
    return cert


def store_upload(
    kind: str,
    cert_pem: bytes,
    key_pem: bytes | None = None,
    passphrase: str | None = None,
    *,
    user=None,
    client_address: str | None = None,
    **options,
) -> Certificate:
    """Validate and store in one go (management commands, scripts, tests)."""
    prepared = prepare_upload(kind, cert_pem, key_pem, passphrase, **options)
    return save_upload(prepared, user=user, client_address=client_address)


def _move_assignments(replaced: Certificate, cert: Certificate) -> list[Host]:
    """Hosts using the replaced CA or client pair now use its replacement."""
    if cert.kind == CertificateKind.SERVER:
        return [cert.host] if cert.host_id else []
    slot = "ca" if cert.kind == CertificateKind.CA else "client"
    rows = HostTLS.objects.select_related("host").filter(**{slot: replaced})
    hosts = [row.host for row in rows]
    rows.update(**{slot: cert})
    return hosts


def _audit(action: str, obj, user, client_address: str | None, details: dict) -> None:
    from migrator.models import AuditEvent  # migrator.models imports hosts.models

    AuditEvent.record(action, actor=user, obj=obj, details=details, client_address=client_address)


def assign_host_tls(
    host: Host,
    ca: Certificate | None,
    client: Certificate | None,
    *,
    user=None,
    client_address: str | None = None,
) -> HostTLS | None:
    """Give `host` the CA + client pair for its qemu+tls:// URI (both None: take it away)."""
    if ca is None and client is None:
        with transaction.atomic():
            previous = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
            if previous is not None:
                _audit(
                    "certificate.assigned",
                    host,
                    user,
                    client_address,
                    {"host": host.name, "ca": None, "client": None, "previous": _assignment(previous)},
                )
                previous.delete()
                transaction.on_commit(lambda: forget_material(host))
        return None
    if ca is None or client is None:
        raise CertificateProblem(
            "Choose both the CA and the client certificate: libvirt needs the CA to check the host and the client "
            "certificate to identify the dashboard.",
            code="incomplete_assignment",
            field="ca" if ca is None else "client",
        )
    if ca.kind != CertificateKind.CA or not ca.active:
        raise CertificateProblem(f"{ca} is not a current CA certificate.", code="not_a_ca", field="ca")
    if client.kind != CertificateKind.CLIENT or not client.active or not client.has_key:
        raise CertificateProblem(
            f"{client} is not a current client certificate with its private key.", code="not_a_client", field="client"
        )
    if client.ca_id != ca.pk:
        raise CertificateProblem(
            f"The client certificate '{client.name}' was issued by '{client.issuer}', not by the CA '{ca.name}'. "
            "Hosts that trust this CA would refuse it: choose the CA that issued it, or a client certificate that "
            "CA issued.",
            code="client_from_other_ca",
            field="client",
        )
    with transaction.atomic():
        previous = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
        before = _assignment(previous) if previous else None
        row, _ = HostTLS.objects.update_or_create(
            host=host,
            defaults={
                "ca": ca,
                "client": client,
                "assigned_by": user if getattr(user, "pk", None) else None,
                "assigned_by_username": getattr(user, "username", "") or "",
                "assigned_at": timezone.now(),
            },
        )
        _audit(
            "certificate.assigned",
            host,
            user,
            client_address,
            {"host": host.name, **_assignment(row), "previous": before},
        )
        transaction.on_commit(lambda: forget_material(host, keep=_material_dir_name(host, ca, client)))
    return row


def _assignment(row: HostTLS) -> dict:
    return {
        "ca": {"certificate_id": row.ca_id, "fingerprint_sha256": row.ca.fingerprint_sha256, "name": row.ca.name},
        "client": {
            "certificate_id": row.client_id,
            "fingerprint_sha256": row.client.fingerprint_sha256,
            "name": row.client.name,
        },
    }


def remove_certificate(cert: Certificate, *, user=None, client_address: str | None = None) -> None:
    """Delete a certificate (and its encrypted key) unless something still relies on it."""
    with transaction.atomic():
        cert = Certificate.objects.select_for_update().get(pk=cert.pk)
        users = sorted(
            {row.host.name for row in HostTLS.objects.select_related("host").filter(Q(ca=cert) | Q(client=cert))}
        )
        if users:
            raise CertificateProblem(
                f"{cert} is assigned to {', '.join(users)} for qemu+tls:// connections. Assign other material to "
                f"{'that host' if len(users) == 1 else 'those hosts'} (or replace this certificate) first.",
                code="in_use",
            )
        if cert.kind == CertificateKind.CA:
            issued = list(cert.issued.filter(active=True).values_list("name", flat=True))
            if issued:
                raise CertificateProblem(
                    f"{len(issued)} current certificate{'s were' if len(issued) != 1 else ' was'} issued by this CA "
                    f"({', '.join(issued)}); remove or replace {'them' if len(issued) != 1 else 'it'} first.",
                    code="ca_in_use",
                )
        _audit("certificate.removed", cert, user, client_address, cert.snapshot())
        cert.delete()


# ------------------------------------------------------------------ use: pkipath for qemu+tls://


class TLSMaterialError(GatewayError):
    """The TLS material on record cannot be written for libvirt."""


def tls_connect_uri(host: Host) -> str:
    """host.uri with `pkipath=DIR`: DIR holds the CA and client pair assigned to
    the host, written to a private directory and reused while the material stays
    the same. Without an assignment libvirt uses its default /etc/pki paths."""
    if host.pk is None:
        return host.uri
    material = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
    if material is None:
        return host.uri
    directory = _ensure_material_dir(host, material.ca, material.client)
    return _with_query_param(host.uri, "pkipath", str(directory))


def _with_query_param(uri: str, key: str, value: str) -> str:
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def _pki_root() -> Path:
    configured = getattr(settings, "TLS_PKI_DIR", None)
    root = Path(configured) if configured else Path(settings.BASE_DIR) / "var" / "pki"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        # A read-only checkout: fall back to a per-user directory in /tmp.
        root = Path(tempfile.gettempdir()) / f"vm-migrator-pki-{os.geteuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
    _require_private_dir(root)
    return root


def _require_private_dir(path: Path) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise TLSMaterialError(
            f"{path} is not a directory owned by the dashboard's user, so private keys cannot be written there "
            "safely. Remove it (or set TLS_PKI_DIR) and try again.",
            uri=str(path),
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _material_dir_name(host: Host, ca: Certificate, client: Certificate) -> str:
    # Fingerprints are public; the key is fixed by the client certificate.
    digest = hashlib.sha256(f"{ca.fingerprint_sha256}|{client.fingerprint_sha256}".encode()).hexdigest()
    return f"{host.pk}-{digest[:16]}"


def _ensure_material_dir(host: Host, ca: Certificate, client: Certificate) -> Path:
    root = _pki_root()
    final = root / _material_dir_name(host, ca, client)
    wanted = {"cacert.pem": ca.pem.encode(), "clientcert.pem": client.pem.encode()}
    if _material_ok(final, wanted):
        return final
    try:
        key_pem = client.decrypted_key_pem()
    except CertificateProblem as problem:
        raise TLSMaterialError(
            f"The private key of the client certificate '{client.name}' assigned to {host.name} cannot be used: "
            f"{problem.message}",
            uri=host.uri,
        ) from None
    # Written complete in a private temporary directory, then renamed into
    # place, so libvirt never reads a half-written key.
    tmp = Path(tempfile.mkdtemp(prefix=f".{host.pk}-", dir=root))
    try:
        for filename, data in (*wanted.items(), ("clientkey.pem", key_pem)):
            _write_private(tmp / filename, data)
        if (final.exists() or final.is_symlink()) and not _material_ok(final, wanted):
            _remove_tree(final)  # damaged or tampered with: written again
        try:
            os.rename(tmp, final)
        except OSError:
            if not _material_ok(final, wanted):  # else another process just wrote the same
                raise
    except OSError as exc:
        raise TLSMaterialError(f"Could not write the TLS material for {host.name} to {root}: {exc}") from exc
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    if not _material_ok(final, wanted):
        raise TLSMaterialError(f"The TLS material for {host.name} in {final} could not be written completely.")
    forget_material(host, keep=final.name)
    return final


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _material_ok(directory: Path, wanted: dict[str, bytes]) -> bool:
    """A cached directory is reused only when it is private, ours and complete."""
    try:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
            return False
        for filename in PKIPATH_FILES:
            file_info = os.lstat(directory / filename)
            if (
                not stat.S_ISREG(file_info.st_mode)
                or file_info.st_uid != os.geteuid()
                or stat.S_IMODE(file_info.st_mode) & 0o077
                or file_info.st_size == 0
            ):
                return False
        return all((directory / filename).read_bytes() == data for filename, data in wanted.items())
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def forget_material(host: Host, keep: str = "") -> None:
    """Delete the host's written TLS material (all but `keep`): decrypted keys do
    not outlive their assignment."""
    try:
        root = _pki_root()
    except (OSError, TLSMaterialError):
        return
    for entry in root.glob(f"{host.pk}-*"):
        if entry.name != keep:
            _remove_tree(entry)


# ------------------------------------------------------------------ readiness and expiry


def _fmt_date(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _days(n: int) -> str:
    return f"{n} day{'' if n == 1 else 's'}"


def tls_readiness(source: Host, destination: Host, now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """Can QEMU encrypt a migration between these hosts? One (status, message)
    per finding: each host's migration certificate is on record, valid, covers
    the host's migration address, and both come from the same CA."""
    now = now or timezone.now()
    results: list[tuple[str, str]] = []
    found: dict[str, Certificate] = {}
    for role, host in (("source", source), ("destination", destination)):
        cert = Certificate.objects.active().select_related("ca").filter(kind=CertificateKind.SERVER, host=host).first()
        if cert is None:
            results.append(
                (
                    FAIL,
                    f"No migration certificate is on record for {host.name} (the {role}). A security admin must "
                    f"upload the server certificate QEMU uses on {host.name} (server-cert.pem in its "
                    "migrate_tls_x509_cert_dir, /etc/pki/qemu by default) under Certificates.",
                )
            )
            continue
        found[role] = cert
        results.extend(_server_certificate_findings(role, host, cert, now))
    if len(found) == 2:
        results.append(_same_ca_finding(source, destination, found["source"], found["destination"]))
    return results


def _server_certificate_findings(role: str, host: Host, cert: Certificate, now: dt.datetime) -> list[tuple[str, str]]:
    which = f"{host.name}'s migration certificate '{cert.name}' (SHA-256 {cert.short_fingerprint})"
    addresses = host_addresses(host)
    try:
        certificates.validate_upload(
            "server",
            cert.pem.encode(),
            ca_pem=cert.ca.pem.encode() if cert.ca_id else None,
            addresses=addresses,
            now=now,
        )
    except CertificateProblem as problem:
        return [(FAIL, f"{which} cannot be used on the {role}: {problem.message}")]
    findings = []
    days = cert.days_left_at(now)
    if days <= EXPIRY_WARNING_DAYS:
        findings.append(
            (WARN, f"{which} expires in {_days(days)}, on {_fmt_date(cert.not_after)}; upload its renewal soon.")
        )
    if cert.ca_id and cert.ca.days_left_at(now) <= EXPIRY_WARNING_DAYS:
        findings.append(
            (
                WARN,
                f"The CA '{cert.ca.name}' that issued {which} expires in {_days(cert.ca.days_left_at(now))}, "
                f"on {_fmt_date(cert.ca.not_after)}.",
            )
        )
    if not addresses:
        findings.append(
            (
                WARN,
                f"{host.name} has no migration address, so it could not be checked that {which} names the address "
                "QEMU connects to; set the host's migration address.",
            )
        )
    else:
        findings.append(
            (
                PASS,
                f"{which} covers {', '.join(addresses)} and is valid until {_fmt_date(cert.not_after)} "
                f"({_days(days)} left).",
            )
        )
    return findings


def _same_ca_finding(source: Host, destination: Host, a: Certificate, b: Certificate) -> tuple[str, str]:
    if a.ca_id is None or b.ca_id is None:
        missing = ", ".join(h.name for h, c in ((source, a), (destination, b)) if c.ca_id is None)
        return (
            FAIL,
            f"The CA that issued the migration certificate of {missing} is no longer on record, so it cannot be "
            "checked that both hosts trust each other. Upload the CA and the host's certificate again.",
        )
    if a.ca.fingerprint_sha256 != b.ca.fingerprint_sha256:
        return (
            FAIL,
            f"{source.name}'s migration certificate was issued by the CA '{a.ca.name}', {destination.name}'s by "
            f"'{b.ca.name}'. Each host checks the other's certificate against its own CA, so the TLS handshake "
            "would fail: re-issue one of them from the other CA.",
        )
    return (PASS, f"Both migration certificates were issued by the CA '{a.ca.name}'.")


def tls_available(source: Host, destination: Host) -> bool:
    """Whether the wizard may offer TLS for this pair (no failing finding)."""
    return all(status != FAIL for status, _ in tls_readiness(source, destination))


@dataclass(frozen=True)
class ExpiryWarning:
    certificate: Certificate
    days_left: int
    message: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "danger" if self.days_left <= EXPIRY_DANGER_DAYS else "warning"


def expiry_warnings(now: dt.datetime | None = None) -> list[ExpiryWarning]:
    """Every current certificate with 30 days or less left (or expired), soonest first."""
    now = now or timezone.now()
    warnings = []
    for cert in Certificate.objects.expiring_within(EXPIRY_WARNING_DAYS, now).select_related("host"):
        days = cert.days_left_at(now)
        if days > EXPIRY_WARNING_DAYS:
            continue
        hosts = cert.served_hosts()
        serves = f"it serves {', '.join(h.name for h in hosts)}" if hosts else "it serves no host yet"
        if cert.not_after < now:
            ago = (now - cert.not_after).days
            when = f"expired {f'{_days(ago)} ago' if ago else 'today'}, on {_fmt_date(cert.not_after)}"
            fix = "Upload its replacement now: TLS connections and encrypted migrations that use it fail."
        elif days == 0:
            when = f"expires today ({cert.not_after:%Y-%m-%d %H:%M} UTC)"
            fix = "Upload its replacement now."
        else:
            when = f"expires in {_days(days)}, on {_fmt_date(cert.not_after)}"
            fix = "Upload its renewal as a replacement before then."
        message = f"{cert.get_kind_display()} '{cert.name}' {when}; {serves}. {fix}"
        warnings.append(ExpiryWarning(certificate=cert, days_left=days, message=message, hosts=hosts))
    return warnings
