"""Read-only review pages: the migration history and its exports (operators
and auditors) and the audit event log (auditors). None of them changes a
record; each export is itself recorded in the audit log."""

from __future__ import annotations

import csv
import functools
import json
from collections import defaultdict
from collections.abc import Iterable

from django.apps import apps
from django.core.exceptions import ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    JsonResponse,
    QueryDict,
)
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from hosts.models import Host

from .audit.models import AuditEvent
from .audit.requests import audit
from .history import (
    DEFAULT_SORT,
    EXPORT_COLUMN_NAMES,
    EXPORT_COLUMNS,
    HEAVY_FIELDS,
    AuditFilterForm,
    HistoryFilterForm,
    csv_cell,
    export_queryset,
    export_row,
    filter_audit_events,
    filter_migrations,
    paginate,
)
from .models import Migration
from .roles import AUDITORS, OPERATORS, role_required

# (label, sort key or None): the history table's columns, in order.
HISTORY_HEADERS = (
    ("#", "id"),
    ("Created", "created_at"),
    ("VM", "vm_name"),
    ("From", "source_name"),
    ("To", "destination_name"),
    ("Storage", "storage_class"),
    ("TLS", None),
    ("Outcome", "state"),
    ("Started by", "started_by_username"),
    ("Total time", "total_time_ms"),
    ("Downtime", "downtime_ms"),
    ("Data sent", "data_processed_bytes"),
    ("Error", None),
)


def _query(request: HttpRequest, **changes: str | None) -> str:
    """The current query string with some parameters replaced or dropped."""
    params: QueryDict = request.GET.copy()
    for key, value in changes.items():
        params.pop(key, None)
        if value is not None:
            params[key] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else ""


def _headers(request: HttpRequest, current: str) -> list[dict]:
    headers = []
    for label, key in HISTORY_HEADERS:
        header = {"label": label, "url": None, "arrow": ""}
        if key:
            header["url"] = _query(request, sort=f"-{key}" if current == key else key, page=None)
            header["arrow"] = "▲" if current == key else "▼" if current == f"-{key}" else ""
        headers.append(header)
    return headers


@role_required(OPERATORS, AUDITORS)
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    form = HistoryFilterForm(request.GET)
    migrations = filter_migrations(form, Migration.objects.defer(*HEAVY_FIELDS))
    page = paginate(migrations, request.GET.get("page"))
    sort = form.cleaned_data["sort"] if form.is_valid() else DEFAULT_SORT
    host_names = (
        set(Migration.objects.values_list("source_name", flat=True).distinct())
        | set(Migration.objects.values_list("destination_name", flat=True).distinct())
        | set(Host.objects.values_list("name", flat=True))
    )
    usernames = Migration.objects.order_by("started_by_username").values_list("started_by_username", flat=True)
    export_query = _query(request, page=None)
    return render(
        request,
        "migrator/history.html",
        {
            "form": form,
            "page": page,
            "headers": _headers(request, sort),
            "host_names": sorted(host_names),
            "usernames": list(usernames.distinct()),
            "export_csv_url": reverse("migrator:export_csv") + export_query,
            "export_json_url": reverse("migrator:export_json") + export_query,
            "export_columns": EXPORT_COLUMNS,
            "filtered": bool(form.is_valid() and form.active_filters()),
        },
    )


def _export_or_error(request: HttpRequest, export_format: str):
    form = HistoryFilterForm(request.GET)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in form.errors.items())
        return None, HttpResponseBadRequest(f"Invalid filter: {errors}", content_type="text/plain")
    migrations = export_queryset(filter_migrations(form))
    count = migrations.count()
    audit(request, "migrations.exported", format=export_format, filters=form.active_filters(), count=count)
    return (form, migrations, count), None


def _filename(extension: str) -> str:
    return f"migrations-{timezone.now():%Y%m%d-%H%M%S}.{extension}"


def _export_view(view):
    """An export is recorded in the audit log, so it is a POST (with the
    page's CSRF token and the filters in the query string): another site
    cannot make a user's browser export, nor flood the log in their name."""

    @functools.wraps(view)
    def post_only(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(
                ["POST"],
                content="Exports are made with the Export buttons on the migration history page (a POST).",
                content_type="text/plain",
            )
        return view(request)

    return role_required(OPERATORS, AUDITORS)(post_only)


@_export_view
def export_csv(request: HttpRequest) -> HttpResponse:
    result, error = _export_or_error(request, "csv")
    if error:
        return error
    _form, migrations, _count = result
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename("csv")}"'
    writer = csv.writer(response)
    writer.writerow(EXPORT_COLUMN_NAMES)
    for migration in migrations.iterator(chunk_size=1000):
        row = export_row(migration)
        writer.writerow([csv_cell(row[name]) for name in EXPORT_COLUMN_NAMES])
    return response


@_export_view
def export_json(request: HttpRequest) -> HttpResponse:
    result, error = _export_or_error(request, "json")
    if error:
        return error
    form, migrations, count = result
    payload = {
        "exported_at": timezone.now().isoformat(),
        "filters": form.active_filters(),
        "columns": list(EXPORT_COLUMN_NAMES),
        "count": count,
        "migrations": [export_row(m) for m in migrations.iterator(chunk_size=1000)],
    }
    response = JsonResponse(payload, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{_filename("json")}"'
    return response


def object_links(events: Iterable[AuditEvent], user) -> dict[tuple[str, str], str]:
    """Where each event's object can be seen, for the objects that still exist:
    its own page, or the admin's page for superusers."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.object_type and event.object_id:
            wanted[event.object_type].add(event.object_id)
    links = {}
    for label, ids in wanted.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue
        pks = []
        for raw in ids:
            try:
                pks.append(model._meta.pk.to_python(raw))
            except ValidationError:
                continue
        for obj in model._default_manager.filter(pk__in=pks):
            url = _object_url(obj, user)
            if url:
                links[(label, str(obj.pk))] = url
    return links


def _object_url(obj, user) -> str | None:
    if hasattr(obj, "get_absolute_url"):
        return obj.get_absolute_url()
    if user.is_superuser:
        try:
            return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
        except NoReverseMatch:
            return None
    return None


@role_required(AUDITORS)
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    page = paginate(filter_audit_events(form), request.GET.get("page"))
    events = list(page.object_list)
    links = object_links(events, request.user)
    rows = [
        {
            "event": event,
            "link": links.get((event.object_type, event.object_id)),
            "details": json.dumps(event.details, sort_keys=True, ensure_ascii=False) if event.details else "",
        }
        for event in events
    ]
    actions = AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
    return render(
        request,
        "migrator/audit_log.html",
        {"form": form, "page": page, "rows": rows, "actions": list(actions)},
    )
