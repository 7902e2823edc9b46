"""Hosts and the inventory cache in the admin, for superusers. Changes made
here are audited like those made on the dashboard's host pages. migrator's
admin keeps a host that migrations use from being deleted."""

from __future__ import annotations

from django.contrib import admin

from migrator.audit.models import AuditEvent
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


@admin.register(VirtualMachine)
class VirtualMachineAdmin(AuditedSuperuserAdmin):
    audit_prefix = "vm.record_"
    list_display = ("name", "uuid", "host", "state", "storage_class", "seen_at")
    list_filter = ("host", "state", "storage_class")
    search_fields = ("name", "uuid")
    list_select_related = ("host",)
