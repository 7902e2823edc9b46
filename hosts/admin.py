"""Hosts and the inventory cache in the admin, for superusers. Changes made
here are audited like those made on the dashboard's host pages."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Q

from migrator.models import AuditEvent, Migration
from migrator.roles import SuperuserOnly

from .models import Host, VirtualMachine


class AuditedSuperuserAdmin(SuperuserOnly, admin.ModelAdmin):
    audit_prefix = ""

    def _audit(self, request, verb: str, obj, **details) -> None:
        AuditEvent.record(
            f"{self.audit_prefix}{verb}",
            actor=request.user,
            obj=obj,
            details={"via": "admin", **details},
            client_address=request.META.get("REMOTE_ADDR") or None,
        )

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        changed = {name: form.cleaned_data.get(name) for name in form.changed_data}
        self._audit(request, "changed" if change else "added", obj, changed=changed)

    def delete_model(self, request, obj) -> None:
        self._audit(request, "removed", obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            self._audit(request, "removed", obj)
        super().delete_queryset(request, queryset)


@admin.register(Host)
class HostAdmin(AuditedSuperuserAdmin):
    audit_prefix = "host."
    list_display = ("name", "uri", "enabled", "inventory_refreshed_at")
    list_filter = ("enabled",)
    search_fields = ("name", "uri")
    readonly_fields = ("info", "inventory_refreshed_at", "inventory_error", "inventory_error_code")

    def has_delete_permission(self, request, obj=None) -> bool:
        # As on the host pages: never remove a host a migration is using.
        if obj is not None and Migration.objects.active().filter(Q(source=obj) | Q(destination=obj)).exists():
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        in_use = set(Migration.objects.active().values_list("source_id", flat=True)) | set(
            Migration.objects.active().values_list("destination_id", flat=True)
        )
        in_use.discard(None)
        kept = [host.name for host in queryset if host.pk in in_use]
        if kept:
            self.message_user(
                request, f"Kept {', '.join(kept)}: migrations in progress use them.", level=messages.WARNING
            )
        super().delete_queryset(request, queryset.exclude(pk__in=in_use))


@admin.register(VirtualMachine)
class VirtualMachineAdmin(AuditedSuperuserAdmin):
    audit_prefix = "vm.record_"
    list_display = ("name", "uuid", "host", "state", "storage_class", "seen_at")
    list_filter = ("host", "state", "storage_class")
    search_fields = ("name", "uuid")
    list_select_related = ("host",)
