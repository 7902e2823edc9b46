from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils import timezone

from . import uris


def validate_libvirt_uri(value: str) -> None:
    """Host.uri and Host.peer_uri: the allow-list of hosts.uris (no URI option
    that runs a program, reads a file or skips a check)."""
    uris.check_uri(value)


def validate_prefixes(value: str) -> None:
    for line in value.splitlines():
        if line.strip() and not line.strip().startswith("/"):
            raise ValidationError(f"{line.strip()!r} is not an absolute path; write one path per line, e.g. /mnt/nfs.")


class HostQuerySet(models.QuerySet):
    def enabled(self) -> HostQuerySet:
        return self.filter(enabled=True)


class Host(models.Model):
    name = models.CharField(max_length=100, unique=True)
    uri = models.CharField(
        "libvirt URI",
        max_length=500,
        validators=[validate_libvirt_uri],
        help_text="How the dashboard reaches this host, e.g. qemu+ssh://root@host-b/system.",
    )
    peer_uri = models.CharField(
        "peer URI",
        max_length=500,
        blank=True,
        validators=[validate_libvirt_uri],
        help_text="How another host's libvirtd reaches this one for peer-to-peer migration "
        "(e.g. qemu+tcp://10.0.0.2/system). Empty: same as the libvirt URI.",
    )
    migration_address = models.CharField(
        max_length=255,
        blank=True,
        help_text="Address QEMU migration traffic goes to on this host (also checked against "
        "the SANs of its TLS certificate).",
    )
    shared_prefixes = models.TextField(
        "shared storage prefixes",
        blank=True,
        validators=[validate_prefixes],
        help_text="One absolute path per line. Disks below these paths are on shared storage "
        "(NFS etc.) mounted at the same path on every host.",
    )
    enabled = models.BooleanField(default=True)
    # Maintenance: no new migration may go to this host; evacuation sets it.
    in_maintenance = models.BooleanField(default=False)
    maintenance_since = models.DateTimeField(null=True, blank=True)
    # Concurrent migrations out of and into this host; empty: the site's
    # MIGRATION_MAX_OUTGOING / MIGRATION_MAX_INCOMING.
    max_outgoing = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Migrations this host may send at once. Empty: the site default."
    )
    max_incoming = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Migrations this host may receive at once. Empty: the site default."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Inventory cache: list pages read these, never libvirt.
    info = models.JSONField(default=dict, blank=True)
    inventory_refreshed_at = models.DateTimeField(null=True, blank=True)
    inventory_error = models.TextField(blank=True)
    inventory_error_code = models.IntegerField(null=True, blank=True)

    objects = HostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("hosts:detail", args=[self.pk])

    @property
    def prefixes(self) -> list[str]:
        return [line.strip().rstrip("/") + "/" for line in self.shared_prefixes.splitlines() if line.strip()]

    @property
    def effective_peer_uri(self) -> str:
        return self.peer_uri or self.uri

    @property
    def reachable(self) -> bool:
        return self.inventory_refreshed_at is not None and not self.inventory_error

    def record_inventory_error(self, error) -> None:
        self.inventory_error = str(error)
        self.inventory_error_code = getattr(error, "code", None)
        self.save(update_fields=["inventory_error", "inventory_error_code"])

    @property
    def outgoing_limit(self) -> int:
        return self.max_outgoing if self.max_outgoing is not None else settings.MIGRATION_MAX_OUTGOING

    @property
    def incoming_limit(self) -> int:
        return self.max_incoming if self.max_incoming is not None else settings.MIGRATION_MAX_INCOMING

    def inventory_age_s(self) -> float | None:
        if self.inventory_refreshed_at is None:
            return None
        return (timezone.now() - self.inventory_refreshed_at).total_seconds()


class StorageClass(models.TextChoices):
    SHARED = "shared", "Shared storage"
    NON_SHARED = "non_shared", "Non-shared storage"


class VirtualMachineQuerySet(models.QuerySet):
    def running(self) -> VirtualMachineQuerySet:
        return self.filter(state__in=("running", "blocked"))


class VirtualMachine(models.Model):
    """A VM as last seen on a host by the inventory."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="vms")
    uuid = models.CharField(max_length=36)
    name = models.CharField(max_length=255)
    state = models.CharField(max_length=32)
    vcpus = models.PositiveIntegerField(default=0)
    memory_kib = models.BigIntegerField(default=0)
    persistent = models.BooleanField(default=True)
    domain_type = models.CharField(max_length=16, blank=True)
    storage_class = models.CharField(max_length=16, choices=StorageClass.choices)
    disks = models.JSONField(default=list)
    interfaces = models.JSONField(default=list)
    details = models.JSONField(default=dict)
    seen_at = models.DateTimeField(default=timezone.now)

    objects = VirtualMachineQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["host", "uuid"], name="one_row_per_vm_per_host")]

    def __str__(self) -> str:
        return f"{self.name} on {self.host.name}"

    def get_absolute_url(self) -> str:
        return reverse("hosts:vm", args=[self.pk])

    @property
    def running(self) -> bool:
        return self.state in ("running", "blocked")

    @property
    def memory_mib(self) -> int:
        return self.memory_kib // 1024

    @property
    def is_shared(self) -> bool:
        return self.storage_class == StorageClass.SHARED
