"""The admin shows migration records and audit events read-only: nobody,
superusers included, can add, change or delete them here. User and group
pages are for superusers only, and their changes land in the audit log. A
host that migrations use cannot be deleted here."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db.models import Q

from hosts.admin import HostAdmin
from hosts.models import Host

from .audit.models import AuditEvent
from .audit.signals import acting_as
from .models import Migration, MigrationEvent, MigrationSample
from .roles import SuperuserOnly

User = get_user_model()


class ReadOnlyAdmin(admin.ModelAdmin):
    actions = None

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MigrationEventInline(admin.TabularInline):
    model = MigrationEvent
    extra = 0
    can_delete = False
    fields = ("at", "state", "message")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Migration)
class MigrationAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "vm_name", "source_name", "destination_name", "state", "started_by_username")
    list_filter = ("state", "storage_class")
    search_fields = ("vm_name", "vm_uuid", "source_name", "destination_name", "started_by_username", "error_message")
    date_hierarchy = "created_at"
    inlines = [MigrationEventInline]


@admin.register(MigrationEvent)
class MigrationEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "migration", "at", "state", "message")
    list_filter = ("state",)
    list_select_related = ("migration",)


@admin.register(MigrationSample)
class MigrationSampleAdmin(ReadOnlyAdmin):
    list_display = ("id", "migration", "elapsed_ms", "iteration", "throughput_mib_s", "dirty_rate_mib_s")
    list_select_related = ("migration",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "at", "actor_username", "client_address", "action", "object_repr")
    list_filter = ("action",)
    search_fields = ("actor_username", "action", "object_repr", "object_id")
    date_hierarchy = "at"


class HostInUseAdmin(HostAdmin):
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


def _acting(request):
    return acting_as(request.user, request.META.get("REMOTE_ADDR") or None)


class AuditedUserAdmin(SuperuserOnly, UserAdmin):
    def save_model(self, request, obj, form, change) -> None:
        with _acting(request):
            super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change) -> None:
        with _acting(request):
            super().save_related(request, form, formsets, change)

    def delete_model(self, request, obj) -> None:
        with _acting(request):
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        with _acting(request):
            # One by one, so each deletion sends its signal.
            for user in queryset:
                user.delete()


class SuperuserOnlyGroupAdmin(SuperuserOnly, GroupAdmin):
    pass


for model, model_admin in ((User, AuditedUserAdmin), (Group, SuperuserOnlyGroupAdmin), (Host, HostInUseAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
