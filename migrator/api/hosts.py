"""Hosts and VMs through the API. Every role reads the hosts, with their
inventory and VM counts, and the VMs the inventory last saw, with the
migration each one is in. Superusers add, change and remove hosts through
the host form (its URI allow-list and its messages) with the host pages'
audit events; operators re-read a host's inventory."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from hosts import inventory
from hosts.forms import HostForm
from hosts.gateway import RUNNING_STATES, STATE_NAMES
from hosts.models import Host, VirtualMachine

from ..audit.models import AuditEvent
from ..audit.requests import client_address
from ..models import Migration
from ..roles import OPERATORS, sees_migrations
from . import idempotency
from .errors import FormRefused, form_errors, refused
from .lookups import as_form_value, host_named
from .serializers import MessageSerializer

FORM_FIELDS = tuple(HostForm.base_fields)
# "shutoff" and "shut_off" find "shut off".
VM_STATES = {name.replace(" ", ""): name for name in sorted(set(STATE_NAMES.values()))}


# The inventory keeps VM names of up to 255 characters.
MAX_NAME_QUERY = 255


def whole_number(value: Any, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise NotFound(f"A {what}'s id is a whole number.") from None


def hosts_with_counts() -> QuerySet[Host]:
    return Host.objects.annotate(
        vm_count=Count("vms", distinct=True),
        running_vm_count=Count("vms", filter=Q(vms__state__in=RUNNING_STATES), distinct=True),
    )


# ------------------------------------------------------------------ serializers


class HostSerializer(serializers.ModelSerializer):
    """A host as the host list shows it: where it is, its limits and
    maintenance, how many VMs the inventory saw and when it last read it."""

    effective_peer_uri = serializers.CharField(read_only=True)
    outgoing_limit = serializers.IntegerField(read_only=True)
    incoming_limit = serializers.IntegerField(read_only=True)
    reachable = serializers.BooleanField(read_only=True)
    vm_count = serializers.IntegerField(read_only=True)
    running_vm_count = serializers.IntegerField(read_only=True)
    hostname = serializers.SerializerMethodField()
    libvirt_version = serializers.SerializerMethodField()
    hypervisor_version = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    page = serializers.SerializerMethodField()
    vms = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "uri",
            "peer_uri",
            "effective_peer_uri",
            "migration_address",
            "shared_prefixes",
            "enabled",
            "in_maintenance",
            "maintenance_since",
            "max_outgoing",
            "max_incoming",
            "outgoing_limit",
            "incoming_limit",
            "hostname",
            "libvirt_version",
            "hypervisor_version",
            "vm_count",
            "running_vm_count",
            "reachable",
            "inventory_refreshed_at",
            "inventory_error",
            "inventory_error_code",
            "created_at",
            "url",
            "page",
            "vms",
        ]
        read_only_fields = fields

    def get_hostname(self, host: Host) -> str:
        return str(host.info.get("hostname", ""))

    def get_libvirt_version(self, host: Host) -> str:
        return str(host.info.get("libvirt_version", ""))

    def get_hypervisor_version(self, host: Host) -> str:
        return str(host.info.get("hypervisor_version", ""))

    def get_url(self, host: Host) -> str:
        return f"/api/v1/hosts/{host.pk}/"

    def get_page(self, host: Host) -> str:
        return host.get_absolute_url()

    def get_vms(self, host: Host) -> str:
        return f"/api/v1/vms/?host={host.pk}"


class HostDetailSerializer(HostSerializer):
    """One host, with everything the inventory read from it (CPU, memory,
    networks, KVM) as the host page shows it."""

    info = serializers.DictField(read_only=True)

    class Meta(HostSerializer.Meta):
        fields = [*HostSerializer.Meta.fields, "info"]
        read_only_fields = fields


class HostFormSerializer(serializers.Serializer):
    """The body of a host request, for the schema: the host form's fields
    (the form itself validates them, with the host pages' messages)."""

    name = serializers.CharField(help_text=str(Host._meta.get_field("name").help_text or "The host's name."))
    uri = serializers.CharField(help_text=str(Host._meta.get_field("uri").help_text))
    peer_uri = serializers.CharField(
        required=False, allow_blank=True, help_text=str(Host._meta.get_field("peer_uri").help_text)
    )
    migration_address = serializers.CharField(
        required=False, allow_blank=True, help_text=str(Host._meta.get_field("migration_address").help_text)
    )
    shared_prefixes = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text=str(Host._meta.get_field("shared_prefixes").help_text) + " A list of paths is taken too.",
    )
    enabled = serializers.BooleanField(required=False, default=True)


class HostRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField()


class VMSerializer(serializers.ModelSerializer):
    """A VM as the host page's table shows it: state, size, storage, disks
    and networks, and the migration it is in. `active_migration` is the
    migration's id for the roles that see migrations (null for the others,
    who see `migrating`)."""

    host = serializers.SerializerMethodField()
    running = serializers.BooleanField(read_only=True)
    memory_mib = serializers.IntegerField(read_only=True)
    arch = serializers.SerializerMethodField()
    machine = serializers.SerializerMethodField()
    hugepages = serializers.SerializerMethodField()
    disks = serializers.SerializerMethodField()
    migrating = serializers.SerializerMethodField()
    active_migration = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    page = serializers.SerializerMethodField()
    dirty_rate = serializers.SerializerMethodField()

    class Meta:
        model = VirtualMachine
        fields = [
            "id",
            "name",
            "uuid",
            "host",
            "state",
            "running",
            "vcpus",
            "memory_kib",
            "memory_mib",
            "persistent",
            "domain_type",
            "arch",
            "machine",
            "hugepages",
            "storage_class",
            "disks",
            "interfaces",
            "seen_at",
            "migrating",
            "active_migration",
            "url",
            "page",
            "dirty_rate",
        ]
        read_only_fields = fields

    @extend_schema_field(HostRefSerializer)
    def get_host(self, vm: VirtualMachine) -> dict[str, Any]:
        return {"id": vm.host_id, "name": vm.host.name, "url": f"/api/v1/hosts/{vm.host_id}/"}

    def get_arch(self, vm: VirtualMachine) -> str:
        return str(vm.details.get("arch", ""))

    def get_machine(self, vm: VirtualMachine) -> str:
        return str(vm.details.get("machine", ""))

    def get_hugepages(self, vm: VirtualMachine) -> bool:
        return bool(vm.details.get("hugepages"))

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_disks(self, vm: VirtualMachine) -> list[dict[str, Any]]:
        """Each disk with whether it is on shared storage and whether a
        migration may copy it, in the words the VM page and refusals use."""
        verdicts = {v.target: v for v in inventory.disk_verdicts(vm.disks, vm.host.prefixes)}
        rows = []
        for disk in vm.disks:
            verdict = verdicts.get(disk["target"])
            rows.append(
                {
                    **disk,
                    "shared": verdict.shared if verdict else None,
                    "migratable": verdict.migratable if verdict else None,
                    "kind": verdict.kind if verdict else "",
                    "reason": verdict.reason if verdict else "",
                }
            )
        return rows

    def _active(self, vm: VirtualMachine) -> Migration | None:
        active = self.context.get("active")
        if active is None:
            return Migration.objects.active().for_vm(vm.uuid).first()
        return active.get(vm.uuid)

    def get_migrating(self, vm: VirtualMachine) -> bool:
        return self._active(vm) is not None

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_active_migration(self, vm: VirtualMachine) -> int | None:
        migration = self._active(vm)
        if migration is None or not self.context.get("sees_migrations", False):
            return None
        return migration.pk

    def get_url(self, vm: VirtualMachine) -> str:
        return f"/api/v1/vms/{vm.pk}/"

    def get_page(self, vm: VirtualMachine) -> str:
        return vm.get_absolute_url()

    def get_dirty_rate(self, vm: VirtualMachine) -> str:
        return f"/api/v1/vms/{vm.pk}/dirty-rate/"


class VMDetailSerializer(VMSerializer):
    """One VM, with what the inventory read from its definition (emulator,
    CPU definition, pinning)."""

    details = serializers.DictField(read_only=True)

    class Meta(VMSerializer.Meta):
        fields = [*VMSerializer.Meta.fields, "details"]
        read_only_fields = fields


# ------------------------------------------------------------------ hosts


def _form_values(host: Host | None, data: Any) -> dict[str, Any]:
    """The host form's values from a JSON body: on top of the host's values
    (PATCH) or of a new host's (POST, PUT), as a browser would post them."""
    if not hasattr(data, "items") or isinstance(data, list):
        raise ValidationError(
            {"non_field_errors": [f"Send a JSON object with the host's fields: {', '.join(FORM_FIELDS)}."]}
        )
    unknown = sorted(set(data) - set(FORM_FIELDS))
    if unknown:
        raise ValidationError(
            {
                name: [f"Unknown or read-only field; the fields you can set are {', '.join(FORM_FIELDS)}."]
                for name in unknown
            }
        )
    source = host if host is not None else Host()
    values: dict[str, Any] = {}
    for name in FORM_FIELDS:
        value = getattr(source, name)
        if value is True:
            values[name] = "on"
        elif value is not False:
            values[name] = value
    for name, value in data.items():
        if name == "shared_prefixes" and isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        if value is False:
            values.pop(name, None)
        else:
            values[name] = as_form_value(value)
    return values


def _report(host: Host) -> str:
    """What the host pages say after reading a host."""
    if host.inventory_error:
        return f"Could not read {host.name}: {host.inventory_error}"
    return f"Read {host.name}: {host.vms.count()} VMs."


def _changed(form: HostForm) -> dict[str, Any]:
    """The fields the form changes, leaving out those whose only change is
    the form's trimming of surrounding spaces and newlines."""
    changed = {}
    for name in form.changed_data:
        before, after = form.initial.get(name), form.cleaned_data[name]
        if isinstance(before, str) and isinstance(after, str) and before.strip() == after:
            continue
        changed[name] = after
    return changed


def _audit(request, verb: str, host: Host, **details: Any) -> None:
    AuditEvent.record(
        f"host.{verb}",
        actor=request.user,
        obj=host,
        details={**details, "via": "API"},
        client_address=client_address(request),
    )


class HostViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """The hosts. Every role reads them; only superusers add, change and
    remove them; operators re-read a host's inventory."""

    read_roles = ()
    write_roles = (OPERATORS,)
    superuser_writes = True
    serializer_class = HostSerializer
    queryset = Host.objects.none()

    def get_queryset(self) -> QuerySet[Host]:
        return hosts_with_counts().order_by("name")

    def get_object(self) -> Host:
        return get_object_or_404(self.get_queryset(), pk=whole_number(self.kwargs["pk"], "host"))

    def _body(self, host: Host) -> dict[str, Any]:
        return HostDetailSerializer(self.get_queryset().get(pk=host.pk)).data

    @extend_schema(summary="List hosts")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="A host, with its inventory", responses=HostDetailSerializer)
    def retrieve(self, request, *args, **kwargs):
        return Response(self._body(self.get_object()))

    @extend_schema(
        summary="Add a host (the host form's checks); its inventory is read at once",
        request=HostFormSerializer,
        responses={201: HostDetailSerializer, 400: MessageSerializer},
        parameters=[
            OpenApiParameter(
                idempotency.HEADER,
                location=OpenApiParameter.HEADER,
                description="Any unique string: a retry with the same key does not add the host twice.",
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        return idempotency.once(request, "hosts.create", lambda: self._create(request))

    def _create(self, request) -> Response:
        form = HostForm(_form_values(None, request.data))
        if not form.is_valid():
            raise FormRefused(form_errors(form))
        host = form.save()
        _audit(request, "added", host, uri=host.uri)
        inventory.refresh_host(host)
        response = Response(self._body(host), status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/hosts/{host.pk}/"
        return response

    def _change(self, request, partial: bool) -> Response:
        host = self.get_object()
        form = HostForm(_form_values(host if partial else None, request.data), instance=host)
        if not form.is_valid():
            raise FormRefused(form_errors(form))
        changed = _changed(form)
        host = form.save()
        _audit(request, "changed", host, changed=changed)
        if changed.keys() & {"uri", "shared_prefixes"}:
            inventory.refresh_host(host)
        return Response(self._body(host))

    @extend_schema(
        summary="Replace a host's settings (fields left out take a new host's values)",
        request=HostFormSerializer,
        responses={200: HostDetailSerializer, 400: MessageSerializer},
    )
    def update(self, request, *args, **kwargs):
        return self._change(request, partial=False)

    @extend_schema(
        summary="Change some of a host's settings",
        request=HostFormSerializer,
        responses={200: HostDetailSerializer, 400: MessageSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        return self._change(request, partial=True)

    @extend_schema(
        summary="Remove a host (refused while migrations use it); its past migrations stay in the history",
        responses={200: MessageSerializer, 409: MessageSerializer},
    )
    def destroy(self, request, *args, **kwargs):
        host = self.get_object()
        with transaction.atomic():
            in_use = Migration.objects.active().filter(Q(source=host) | Q(destination=host))
            if in_use.exists():
                return refused(f"{host.name} has migrations in progress; wait for them to end or cancel them.")
            _audit(request, "removed", host, uri=host.uri)
            host.delete()
        return Response({"detail": f"Removed {host.name}. Its past migrations stay in the history."})

    @extend_schema(
        summary="Read a host's inventory again",
        request=None,
        responses={
            200: inline_serializer(
                "HostRefreshed", {"detail": serializers.CharField(), "host": HostDetailSerializer()}
            ),
            409: inline_serializer(
                "HostUnreachable", {"detail": serializers.CharField(), "host": HostDetailSerializer()}
            ),
        },
    )
    @action(detail=True, methods=["post"], superuser_writes=False)
    def refresh(self, request, pk=None):
        host = inventory.refresh_host(self.get_object())
        code = status.HTTP_409_CONFLICT if host.inventory_error else status.HTTP_200_OK
        return Response({"detail": _report(host), "host": self._body(host)}, status=code)


# ------------------------------------------------------------------ VMs


class VMViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The VMs the inventory last saw on each host. Every role reads them."""

    read_roles = ()
    serializer_class = VMSerializer
    queryset = VirtualMachine.objects.none()

    def get_queryset(self) -> QuerySet[VirtualMachine]:
        vms = VirtualMachine.objects.select_related("host")
        if self.action != "list":
            return vms
        params = self.request.query_params
        if params.get("host"):
            vms = vms.filter(host=host_named(params["host"], "host"))
        state = params.get("state", "").strip()
        if state:
            key = state.lower().replace(" ", "").replace("_", "").replace("-", "")
            if key not in VM_STATES:
                raise ValidationError(
                    {"state": [f"There is no VM state {state!r}; the states are {', '.join(VM_STATES.values())}."]}
                )
            vms = vms.filter(state=VM_STATES[key])
        q = params.get("q", "").strip()
        if len(q) > MAX_NAME_QUERY:
            raise ValidationError({"q": [f"Search with at most {MAX_NAME_QUERY} characters of the VM's name."]})
        if q:
            vms = vms.filter(name__icontains=q)
        return vms.order_by("name", "host__name", "pk")

    def get_object(self) -> VirtualMachine:
        return get_object_or_404(self.get_queryset(), pk=whole_number(self.kwargs["pk"], "VM"))

    def _context(self, vms: list[VirtualMachine]) -> dict[str, Any]:
        active = Migration.objects.active().filter(vm_uuid__in={vm.uuid for vm in vms})
        return {"active": {m.vm_uuid: m for m in active}, "sees_migrations": sees_migrations(self.request.user)}

    @extend_schema(
        summary="List VMs",
        parameters=[
            OpenApiParameter("host", description="Only the VMs of this host: its id or its name."),
            OpenApiParameter("state", description=f"Only VMs in this state: {', '.join(VM_STATES.values())}."),
            OpenApiParameter("q", description="Only VMs whose name contains this (any case)."),
        ],
    )
    def list(self, request, *args, **kwargs):
        vms = self.get_queryset()
        page = self.paginate_queryset(vms)
        rows = list(page if page is not None else vms)
        data = VMSerializer(rows, many=True, context=self._context(rows)).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    @extend_schema(summary="A VM, with its disks' verdicts and the migration it is in", responses=VMDetailSerializer)
    def retrieve(self, request, *args, **kwargs):
        vm = self.get_object()
        return Response(VMDetailSerializer(vm, context=self._context([vm])).data)


router = SimpleRouter()
router.register("hosts", HostViewSet, basename="hosts")
router.register("vms", VMViewSet, basename="vms")
urlpatterns = [*router.urls]
