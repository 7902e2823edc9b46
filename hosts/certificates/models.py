"""The certificates on record and the TLS material each host's qemu+tls:// URI uses.

Three kinds of certificate are kept: CA certificates; client certificate + key
pairs, which the dashboard presents when it opens ``qemu+tls://`` connections;
and each host's migration server certificate, as deployed on that host (only the
certificate: the host's key never leaves the host). Private keys are stored
encrypted (``secrets``).

The tables were created by the hosts app and keep their names.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from hosts.models import Host

from . import secrets
from .errors import CertificateProblem
from .policy import EXPIRY_WARNING_DAYS

#: Certificates this close to expiry (or past it) are shown in red.
EXPIRY_DANGER_DAYS = 7


def host_addresses(host: Host) -> list[str]:
    """The names peers use to reach the host's migration server: its migration
    address, else the host of its peer URI (libvirt's fallback)."""
    if host.migration_address.strip():
        return [host.migration_address.strip()]
    hostname = urlsplit(host.effective_peer_uri).hostname
    return [hostname] if hostname else []


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
        db_table = "hosts_certificate"
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
        return secrets.decrypt_secret(bytes(self.encrypted_key), secrets.secret_keys())

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
        db_table = "hosts_hosttls"
        verbose_name = "host TLS material"
        verbose_name_plural = "host TLS material"

    def __str__(self) -> str:
        return f"TLS material of {self.host.name}"
