"""Finding past migrations: the history filters, the sort whitelist and the
export columns shared by the CSV and JSON exports.

Filters match the snapshot columns (names, URIs, usernames), never the
foreign keys, so a record stays findable after its host, VM or user is gone.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.paginator import Page, Paginator
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from .audit.models import AuditEvent
from .models import Migration, MigrationState

PAGE_SIZE = 50

SINCE_CHOICES = [
    ("", "any time"),
    ("1h", "last hour"),
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
]
SINCE_DELTAS = {
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
YES_NO = [("", "any"), ("yes", "yes"), ("no", "no")]

# Public sort keys are the column names; anything else falls back to the default.
SORTABLE_COLUMNS = (
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "state",
    "vm_name",
    "source_name",
    "destination_name",
    "storage_class",
    "started_by_username",
    "total_time_ms",
    "downtime_ms",
    "data_processed_bytes",
)
DEFAULT_SORT = "-created_at"

# Columns a history page does not need; exports read the ones they list.
HEAVY_FIELDS = ("last_sample", "final_stats", "precheck_report", "job_precheck_report", "prediction", "error_details")


def parse_local_datetime_end(raw: str, value: dt.datetime) -> dt.datetime:
    """A bare date as the end of a range means the whole of that day."""
    if len(raw.strip()) <= 10:
        return dt.datetime.combine(value.date(), dt.time.max, value.tzinfo)
    return value


# Filters are names and words, never documents: a long one is a typo or an attack
# (SQLite refuses LIKE patterns over 50 000 bytes).
FILTER_MAX_LENGTH = 200
# The years a date filter may name: beyond them the server's time zone cannot
# turn them into UTC.
FIRST_YEAR, LAST_YEAR = 1900, 9998


END_HELP = "Inclusive; a date alone means the end of that day."


def _local_datetime_field(label: str, help_text: str = "") -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label,
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text=help_text,
    )


def _suggested_text_field(datalist: str, help_text: str, label: str | None = None) -> forms.CharField:
    """A free-text filter with suggestions from the page's <datalist id=...>."""
    return forms.CharField(
        label=label,
        required=False,
        max_length=FILTER_MAX_LENGTH,
        widget=forms.TextInput(attrs={"list": datalist}),
        help_text=help_text,
    )


class DateRangeForm(forms.Form):
    """A filter form with an optional [start, end] range of local datetimes."""

    range_fields: tuple[str, str]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        start_name, end_name = self.range_fields
        for name in (start_name, end_name):
            value = cleaned.get(name)
            if value is not None and not FIRST_YEAR <= value.year <= LAST_YEAR:
                self.add_error(name, f"Give a date between the years {FIRST_YEAR} and {LAST_YEAR}.")
                cleaned.pop(name, None)
        start, end = cleaned.get(start_name), cleaned.get(end_name)
        if end is not None:
            end = cleaned[end_name] = parse_local_datetime_end(self.data.get(self.add_prefix(end_name), ""), end)
        if start and end and start > end:
            self.add_error(end_name, "The end of the date range is before its start; swap the two dates.")
        return cleaned


class HistoryFilterForm(DateRangeForm):
    """Every field is optional; an empty form lists every migration."""

    range_fields = ("created_from", "created_to")

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=FILTER_MAX_LENGTH,
        help_text="Words found in the VM name or UUID, host names, usernames or the error message.",
    )
    state = forms.ChoiceField(required=False, choices=[("", "any state"), *MigrationState.choices])
    vm = forms.CharField(
        label="VM", required=False, max_length=FILTER_MAX_LENGTH, help_text="Part of the VM name or UUID."
    )
    source = _suggested_text_field("host-names", "Host name at the time (exact).", "Source host")
    destination = _suggested_text_field("host-names", "Host name at the time (exact).", "Destination host")
    user = _suggested_text_field("usernames", "Username that started or cancelled the migration (exact).")
    since = forms.ChoiceField(label="Created", required=False, choices=SINCE_CHOICES)
    created_from = _local_datetime_field("Created from", "Server time zone.")
    created_to = _local_datetime_field("Created to", END_HELP)
    storage = forms.ChoiceField(
        required=False,
        choices=[("", "any storage"), ("shared", "shared"), ("non_shared", "non-shared")],
    )
    tls = forms.ChoiceField(label="TLS", required=False, choices=YES_NO)
    cancelled = forms.ChoiceField(required=False, choices=YES_NO, help_text="Cancelled, or a cancel was requested.")
    sort = forms.CharField(required=False, max_length=FILTER_MAX_LENGTH, widget=forms.HiddenInput)

    def clean_sort(self) -> str:
        value = (self.cleaned_data.get("sort") or "").strip()
        return value if value.lstrip("-") in SORTABLE_COLUMNS else DEFAULT_SORT

    def active_filters(self) -> dict[str, Any]:
        """The filters in use, in a form fit for an export header or the audit log."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return {
            name: value.isoformat() if isinstance(value, dt.datetime) else value
            for name, value in data.items()
            if value not in ("", None) and name != "sort"
        }


def filter_migrations(form: HistoryFilterForm, queryset: QuerySet | None = None) -> QuerySet:
    """The migrations matching a filter form, sorted; none when the form is invalid."""
    qs = Migration.objects.all() if queryset is None else queryset
    if not form.is_valid():
        return qs.none()
    data = form.cleaned_data

    if data["state"]:
        qs = qs.filter(state=data["state"])
    if data["vm"]:
        qs = qs.filter(Q(vm_name__icontains=data["vm"]) | Q(vm_uuid__icontains=data["vm"]))
    if data["source"]:
        qs = qs.filter(source_name__iexact=data["source"].strip())
    if data["destination"]:
        qs = qs.filter(destination_name__iexact=data["destination"].strip())
    if data["user"]:
        username = data["user"].strip()
        qs = qs.filter(Q(started_by_username__iexact=username) | Q(cancelled_by_username__iexact=username))
    if data["since"]:
        qs = qs.filter(created_at__gte=timezone.now() - SINCE_DELTAS[data["since"]])
    if data["created_from"]:
        qs = qs.filter(created_at__gte=data["created_from"])
    if data["created_to"]:
        qs = qs.filter(created_at__lte=data["created_to"])
    if data["storage"]:
        qs = qs.filter(storage_class=data["storage"])
    if data["tls"] == "yes":
        qs = qs.filter(parameters__tls=True)
    elif data["tls"] == "no":
        # A record without the key (older parameter sets) did not use TLS.
        qs = qs.filter(Q(parameters__tls=False) | ~Q(parameters__has_key="tls"))
    cancelled = Q(state=MigrationState.CANCELLED) | ~Q(cancelled_by_username="")
    if data["cancelled"] == "yes":
        qs = qs.filter(cancelled)
    elif data["cancelled"] == "no":
        qs = qs.exclude(cancelled)
    for word in data["q"].split():
        qs = qs.filter(
            Q(vm_name__icontains=word)
            | Q(vm_uuid__icontains=word)
            | Q(source_name__icontains=word)
            | Q(destination_name__icontains=word)
            | Q(started_by_username__icontains=word)
            | Q(cancelled_by_username__icontains=word)
            | Q(error_message__icontains=word)
        )
    return qs.order_by(*ordering(data["sort"]))


def ordering(sort: str) -> list:
    """Order expressions for a whitelisted sort key. Empty values sort last
    in both directions, on SQLite and PostgreSQL alike."""
    descending = sort.startswith("-")
    column = sort.lstrip("-")
    if column not in SORTABLE_COLUMNS:
        return ordering(DEFAULT_SORT)
    field = "pk" if column == "id" else column
    expression = F(field).desc(nulls_last=True) if descending else F(field).asc(nulls_last=True)
    return [expression, "-pk" if descending else "pk"]


def paginate(queryset: QuerySet, page_number: str | None) -> Page:
    return Paginator(queryset, PAGE_SIZE).get_page(page_number)


# --------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportColumn:
    name: str
    description: str
    value: Callable[[Migration], Any]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


EXPORT_COLUMNS: tuple[ExportColumn, ...] = (
    ExportColumn("id", "Migration number, as in the dashboard's URL /migrations/<id>/.", lambda m: m.pk),
    ExportColumn(
        "state",
        "queued, running, cancelling, succeeded, failed or cancelled.",
        lambda m: m.state,
    ),
    ExportColumn("vm_name", "VM name when the migration was requested.", lambda m: m.vm_name),
    ExportColumn("vm_uuid", "VM UUID.", lambda m: m.vm_uuid),
    ExportColumn("vm_vcpus", "vCPUs of the VM at the time.", lambda m: m.vm_vcpus),
    ExportColumn("vm_memory_kib", "Memory of the VM at the time, KiB.", lambda m: m.vm_memory_kib),
    ExportColumn("source_name", "Source host name at the time.", lambda m: m.source_name),
    ExportColumn("source_uri", "Source host libvirt URI at the time.", lambda m: m.source_uri),
    ExportColumn("destination_name", "Destination host name at the time.", lambda m: m.destination_name),
    ExportColumn("destination_uri", "Destination host libvirt URI at the time.", lambda m: m.destination_uri),
    ExportColumn("storage_class", "shared or non_shared (R7).", lambda m: m.storage_class),
    ExportColumn("tls", "Whether TLS encryption was requested (true/false).", lambda m: bool(m.parameters.get("tls"))),
    ExportColumn("started_by", "Username that started the migration.", lambda m: m.started_by_username),
    ExportColumn("client_address", "IP address the start request came from.", lambda m: m.client_address),
    ExportColumn("cancelled_by", "Username that cancelled it; empty if nobody did.", lambda m: m.cancelled_by_username),
    ExportColumn("created_at", "When it was requested (ISO 8601, UTC offset).", lambda m: _iso(m.created_at)),
    ExportColumn("started_at", "When a worker started it; empty if it never started.", lambda m: _iso(m.started_at)),
    ExportColumn("finished_at", "When it ended; empty while active.", lambda m: _iso(m.finished_at)),
    ExportColumn("total_time_ms", "libvirt's total migration time, ms.", lambda m: m.total_time_ms),
    ExportColumn("downtime_ms", "Time the guest was paused, ms.", lambda m: m.downtime_ms),
    ExportColumn("data_processed_bytes", "Data sent to the destination, bytes.", lambda m: m.data_processed_bytes),
    ExportColumn("iterations", "Memory copy passes.", lambda m: m.iterations),
    ExportColumn("avg_throughput_mib_s", "Average throughput, MiB/s.", lambda m: m.avg_throughput_mib_s),
    ExportColumn("error_code", "libvirt error code on failure.", lambda m: m.error_code),
    ExportColumn("error_domain", "libvirt error domain on failure.", lambda m: m.error_domain),
    ExportColumn("error_message", "libvirt's or the dashboard's error message on failure.", lambda m: m.error_message),
    ExportColumn("outcome_note", "What happened, in words.", lambda m: m.outcome_note),
    ExportColumn("vm_location", "Host the VM ran on after the migration.", lambda m: m.vm_location),
    ExportColumn(
        "parameters",
        "Parameters as requested (JSON object; a JSON string in the CSV).",
        lambda m: m.parameters,
    ),
    ExportColumn(
        "applied_parameters",
        "Parameters as applied to libvirt (JSON object; a JSON string in the CSV).",
        lambda m: m.applied_parameters,
    ),
)
EXPORT_COLUMN_NAMES = tuple(column.name for column in EXPORT_COLUMNS)


def export_row(migration: Migration) -> dict[str, Any]:
    """One migration as JSON-ready values, keyed by column name."""
    return {column.name: column.value(migration) for column in EXPORT_COLUMNS}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        # A spreadsheet would run "=cmd(...)" typed into a VM or error field.
        return "'" + value
    return str(value)


def export_queryset(queryset: QuerySet) -> QuerySet:
    return queryset.defer(*HEAVY_FIELDS)


# ------------------------------------------------------------------ audit log


class AuditFilterForm(DateRangeForm):
    range_fields = ("at_from", "at_to")

    action = _suggested_text_field(
        "audit-actions",
        "An action such as host.removed, or a prefix ending in a dot or * (host.* for every host action).",
    )
    actor = forms.CharField(required=False, max_length=FILTER_MAX_LENGTH, help_text="Username (exact).")
    since = forms.ChoiceField(label="When", required=False, choices=SINCE_CHOICES)
    at_from = _local_datetime_field("From")
    at_to = _local_datetime_field("To", END_HELP)
    object_type = forms.CharField(required=False, max_length=FILTER_MAX_LENGTH, widget=forms.HiddenInput)
    object_id = forms.CharField(required=False, max_length=FILTER_MAX_LENGTH, widget=forms.HiddenInput)


def filter_audit_events(form: AuditFilterForm, queryset: QuerySet | None = None) -> QuerySet:
    qs = AuditEvent.objects.all() if queryset is None else queryset
    if not form.is_valid():
        return qs.none()
    data = form.cleaned_data
    action = data["action"].strip()
    if action.endswith(("*", ".")):
        qs = qs.filter(action__startswith=action.rstrip("*"))
    elif action:
        qs = qs.filter(action=action)
    if data["actor"]:
        qs = qs.filter(actor_username__iexact=data["actor"].strip())
    if data["since"]:
        qs = qs.filter(at__gte=timezone.now() - SINCE_DELTAS[data["since"]])
    if data["at_from"]:
        qs = qs.filter(at__gte=data["at_from"])
    if data["at_to"]:
        qs = qs.filter(at__lte=data["at_to"])
    if data["object_type"]:
        qs = qs.filter(object_type=data["object_type"])
    if data["object_id"]:
        qs = qs.filter(object_id=data["object_id"])
    return qs.order_by("-at", "-pk")
