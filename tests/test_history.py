"""The migration history: filters, search, sorting, pagination, exports and
records that outlive their hosts."""

import csv
import datetime as dt
import io
import json
import re
import uuid
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from django.utils import timezone

from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.history import EXPORT_COLUMN_NAMES, PAGE_SIZE, HistoryFilterForm, filter_migrations
from migrator.models import Migration

NOW = timezone.now()


def make(name: str, **fields) -> Migration:
    values = {
        "vm_name": name,
        "vm_uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        "source_name": "host-a",
        "source_uri": "qemu+ssh://root@host-a/system",
        "destination_name": "host-b",
        "destination_uri": "qemu+ssh://root@host-b/system",
        "storage_class": "shared",
        "started_by_username": "olivia",
        "state": "succeeded",
        "parameters": {"tls": False},
        "created_at": NOW - dt.timedelta(minutes=5),
    }
    values.update(fields)
    return Migration.objects.create(**values)


@pytest.fixture
def records(db):
    """Ten migrations that differ in every filtered column."""
    return {
        m.vm_name: m
        for m in [
            make("web-1", total_time_ms=9000, downtime_ms=30, data_processed_bytes=4 << 30),
            make(
                "web-2",
                state="failed",
                error_message="Unable to connect to host-b: No route to host",
                error_code=38,
                error_domain=7,
                created_at=NOW - dt.timedelta(minutes=30),
            ),
            make("db-1", storage_class="non_shared", parameters={"tls": True}, total_time_ms=60000),
            make(
                "db-2",
                state="failed",
                source_name="host-c",
                source_uri="qemu+ssh://root@host-c/system",
                error_message="operation failed: migration out of memory",
                created_at=NOW - dt.timedelta(hours=3),
            ),
            make(
                "cache-1",
                state="cancelled",
                cancelled_by_username="arthur",
                created_at=NOW - dt.timedelta(days=2),
            ),
            make(
                "cache-2",
                state="failed",
                cancelled_by_username="olivia",
                error_message="cancelled by user",
                created_at=NOW - dt.timedelta(days=10),
            ),
            make(
                "batch-1",
                destination_name="host-c",
                destination_uri="qemu+tls://host-c/system",
                started_by_username="peter",
                parameters={"tls": True, "parallel_connections": 4},
                total_time_ms=3000,
            ),
            make("batch-2", parameters={}, started_by_username="Peter", created_at=NOW - dt.timedelta(days=40)),
            make("legacy", vm_uuid="6a1d0f1e-feed-4bad-beef-0123456789ab", state="running"),
            make("queued-1", state="queued", source_name="host-b", destination_name="host-a"),
        ]
    }


def names(**filters) -> set[str]:
    form = HistoryFilterForm(filters)
    return {m.vm_name for m in filter_migrations(form)}


ALL = {"web-1", "web-2", "db-1", "db-2", "cache-1", "cache-2", "batch-1", "batch-2", "legacy", "queued-1"}


def test_it_lists_everything_without_filters(records):
    assert names() == ALL


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"state": "failed"}, {"web-2", "db-2", "cache-2"}),
        ({"state": "queued"}, {"queued-1"}),
        ({"vm": "WEB"}, {"web-1", "web-2"}),
        ({"vm": "feed-4bad"}, {"legacy"}),
        ({"source": "host-c"}, {"db-2"}),
        ({"source": "HOST-B"}, {"queued-1"}),
        ({"destination": "host-c"}, {"batch-1"}),
        ({"destination": "host-a"}, {"queued-1"}),
        ({"user": "peter"}, {"batch-1", "batch-2"}),
        ({"user": "arthur"}, {"cache-1"}),
        ({"storage": "non_shared"}, {"db-1"}),
        ({"storage": "shared"}, ALL - {"db-1"}),
        ({"tls": "yes"}, {"db-1", "batch-1"}),
        ({"tls": "no"}, ALL - {"db-1", "batch-1"}),
        ({"cancelled": "yes"}, {"cache-1", "cache-2"}),
        ({"cancelled": "no"}, ALL - {"cache-1", "cache-2"}),
        ({"since": "1h"}, ALL - {"db-2", "cache-1", "cache-2", "batch-2"}),
        ({"since": "24h"}, ALL - {"cache-1", "cache-2", "batch-2"}),
        ({"since": "30d"}, ALL - {"batch-2"}),
        ({"q": "route"}, {"web-2"}),
        ({"q": "memory"}, {"db-2"}),
        ({"q": "host-c"}, {"db-2", "batch-1"}),
        ({"q": "arthur"}, {"cache-1"}),
        ({"q": "6A1D0F1E"}, {"legacy"}),
        ({"q": "host-c out"}, {"db-2"}),
        ({"q": "no-such-thing"}, set()),
        ({"state": "failed", "source": "host-a", "since": "1h"}, {"web-2"}),
        ({"state": "failed", "cancelled": "no"}, {"web-2", "db-2"}),
        ({"tls": "yes", "user": "peter"}, {"batch-1"}),
    ],
)
def test_it_filters_exactly(records, filters, expected):
    assert names(**filters) == expected


def test_it_filters_by_date_range(records):
    now = timezone.localtime(NOW)  # the form reads dates in the server's time zone
    start = (now - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S")
    end = (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert names(created_from=start, created_to=end) == {"db-2", "cache-1"}
    assert names(created_to=(now - dt.timedelta(days=39)).strftime("%Y-%m-%d")) == {"batch-2"}
    day = (now - dt.timedelta(days=10)).strftime("%Y-%m-%d")
    assert names(created_from=day, created_to=day) == {"cache-2"}


def test_it_returns_nothing_for_an_invalid_filter(records):
    assert names(state="exploded") == set()
    form = HistoryFilterForm({"created_from": "2024-02-01", "created_to": "2024-01-01"})
    assert not form.is_valid()
    assert "created_to" in form.errors


def test_it_sorts_by_whitelisted_columns_with_empty_values_last(records):
    def order(sort: str) -> list[str]:
        return [m.vm_name for m in filter_migrations(HistoryFilterForm({"sort": sort}))]

    assert order("total_time_ms")[:3] == ["batch-1", "web-1", "db-1"]
    assert order("-total_time_ms")[:3] == ["db-1", "web-1", "batch-1"]
    assert order("vm_name")[:2] == ["batch-1", "batch-2"]
    assert order("-created_at")[-1] == "batch-2"
    # Anything outside the whitelist falls back to the newest first.
    assert order("error_details") == order("-created_at")
    assert order("-parameters__tls") == order("-created_at")


def test_it_paginates_by_fifty(login):
    Migration.objects.bulk_create(
        Migration(
            vm_name=f"vm-{i:03d}",
            vm_uuid=f"uuid-{i}",
            source_name="a",
            destination_name="b",
            storage_class="shared",
            state="succeeded",
            created_at=NOW - dt.timedelta(minutes=i),
        )
        for i in range(2 * PAGE_SIZE + 7)
    )
    client = login("auditor")
    first = client.get(reverse("migrator:list"))
    assert len(first.context["page"].object_list) == PAGE_SIZE
    assert first.context["page"].paginator.num_pages == 3
    assert "vm-000" in first.content.decode()
    last = client.get(reverse("migrator:list"), {"page": 3, "sort": "vm_name"})
    assert [m.vm_name for m in last.context["page"]] == [f"vm-{i:03d}" for i in range(100, 107)]
    assert "page=2" in last.content.decode()


def test_it_shows_the_history_with_outcomes(login, records):
    response = login("operator").get(reverse("migrator:list"), {"state": "failed"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "web-2" in body and "No route to host" in body
    assert "web-1" not in body
    assert 'id="export-columns"' in body
    for name in EXPORT_COLUMN_NAMES:
        assert f'<td class="mono">{name}</td>' in body
    assert reverse("migrator:export_csv") + "?state=failed" in body


def test_it_refuses_the_history_to_security_admins_and_outsiders(login, records):
    for role in ("security", "outsider"):
        client = login(role)
        assert client.get(reverse("migrator:list")).status_code == 403, role
        for name in ("migrator:export_csv", "migrator:export_json"):
            assert client.post(reverse(name)).status_code == 403, (role, name)


def export(client, name: str, filters: dict | None = None):
    """An export as the page makes it: a POST, the filters in the query string."""
    query = f"?{urlencode(filters)}" if filters else ""
    return client.post(reverse(f"migrator:{name}") + query)


def test_it_exports_only_on_post_and_records_nothing_on_get(login, records):
    """A link or an image on another site cannot export nor write to the audit log."""
    client = login("auditor")
    before = AuditEvent.objects.count()
    for name in ("export_csv", "export_json"):
        response = client.get(reverse(f"migrator:{name}"), {"state": "failed"})
        assert response.status_code == 405
        assert "Export buttons" in response.content.decode()
    assert AuditEvent.objects.count() == before


def read_csv(response) -> list[dict]:
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    reader = csv.DictReader(io.StringIO(response.content.decode()))
    assert tuple(reader.fieldnames) == EXPORT_COLUMN_NAMES
    return list(reader)


def test_it_exports_the_filtered_set_as_csv(login, records):
    response = export(login("auditor"), "export_csv", {"state": "failed", "sort": "vm_name"})
    rows = read_csv(response)
    assert [row["vm_name"] for row in rows] == ["cache-2", "db-2", "web-2"]
    web2 = rows[2]
    assert web2["id"] == str(records["web-2"].pk)
    assert web2["error_code"] == "38" and web2["error_domain"] == "7"
    assert web2["error_message"] == "Unable to connect to host-b: No route to host"
    assert web2["tls"] == "false"
    assert web2["downtime_ms"] == ""
    assert json.loads(web2["parameters"]) == {"tls": False}
    assert dt.datetime.fromisoformat(web2["created_at"]) == records["web-2"].created_at


def test_it_exports_every_row_and_column_as_csv(login, records):
    rows = read_csv(export(login("operator"), "export_csv"))
    assert len(rows) == len(ALL)
    assert all(set(row) == set(EXPORT_COLUMN_NAMES) for row in rows)


def test_it_exports_the_filtered_set_as_json(login, records):
    response = export(login("operator"), "export_json", {"tls": "yes"})
    assert response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["columns"] == list(EXPORT_COLUMN_NAMES)
    assert data["filters"] == {"tls": "yes"}
    assert data["count"] == 2
    assert {m["vm_name"] for m in data["migrations"]} == {"db-1", "batch-1"}
    for row in data["migrations"]:
        assert list(row) == list(EXPORT_COLUMN_NAMES)
        assert row["tls"] is True
    batch = next(m for m in data["migrations"] if m["vm_name"] == "batch-1")
    assert batch["parameters"] == {"tls": True, "parallel_connections": 4}
    assert batch["total_time_ms"] == 3000


def test_it_records_each_export_in_the_audit_log(login, users, records):
    export(login("auditor"), "export_json", {"state": "failed"})
    event = AuditEvent.objects.get(action="migrations.exported")
    assert event.actor_username == "arthur"
    assert event.details == {"format": "json", "filters": {"state": "failed"}, "count": 3}


def test_it_rejects_an_export_with_invalid_filters(login, records):
    response = export(login("auditor"), "export_csv", {"state": "exploded"})
    assert response.status_code == 400
    assert b"state" in response.content


def test_it_keeps_migrations_readable_after_their_host_is_deleted(login, records):
    gone = Host.objects.create(name="host-gone", uri="qemu+ssh://root@host-gone/system")
    migration = make(
        "orphan",
        source=gone,
        source_name="host-gone",
        source_uri="qemu+ssh://root@host-gone/system",
        state="failed",
        error_message="host-gone lost power",
    )
    gone.delete()
    migration.refresh_from_db()
    assert migration.source_id is None

    client = login("auditor")
    history = client.get(reverse("migrator:list"), {"source": "host-gone"})
    assert history.status_code == 200
    assert [m.pk for m in history.context["page"]] == [migration.pk]
    assert "host-gone" in history.content.decode()
    detail = client.get(migration.get_absolute_url())
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "host-gone" in body and "qemu+ssh://root@host-gone/system" in body
    assert "host-gone lost power" in body


def test_it_finds_last_hours_failed_migrations_from_a_host_explains_and_exports_them(login, records):
    """Done when: an auditor finds last hour's failed migrations from host A,
    opens one, sees why it failed, and exports the list."""
    Host.objects.create(name="host-a", uri="qemu+ssh://root@host-a/system")
    client = login("auditor")

    history = client.get(reverse("migrator:list"))
    assert 'name="since"' in history.content.decode()

    query = {"state": "failed", "source": "host-a", "since": "1h"}
    page = client.get(reverse("migrator:list"), query)
    assert page.status_code == 200
    found = list(page.context["page"])
    assert [m.vm_name for m in found] == ["web-2"]
    body = page.content.decode()

    detail_url = found[0].get_absolute_url()
    assert f'href="{detail_url}"' in body
    detail = client.get(detail_url)
    assert detail.status_code == 200
    assert "Unable to connect to host-b: No route to host" in detail.content.decode()
    assert "code 38, domain 7" in detail.content.decode()

    export_url = re.search(r'action="([^"]+)" class="mr-1">', body).group(1).replace("&amp;", "&")
    rows = read_csv(client.post(export_url))
    assert [row["vm_name"] for row in rows] == ["web-2"]
    assert rows[0]["error_message"] == "Unable to connect to host-b: No route to host"


def test_it_shows_auditors_the_whole_story_of_a_migration(login, db):
    m = make(
        "story",
        state="failed",
        started_at=NOW - dt.timedelta(minutes=4),
        finished_at=NOW - dt.timedelta(minutes=3),
        total_time_ms=61000,
        downtime_ms=420,
        iterations=7,
        data_processed_bytes=3 << 30,
        cancelled_by_username="arthur",
        client_address="192.0.2.10",
        error_message="operation failed: migration job: unexpectedly failed",
        error_code=1,
        error_domain=10,
        error_details={"message": "operation failed", "code": 1, "domain": 10, "level": 2, "extra": {"str1": "x"}},
        prediction={
            "available": True,
            "plan": {
                "verdict": "converges",
                "total_time_s": 42.5,
                "downtime_ms": 300.0,
                "iterations": 5,
                "data_sent_mib": 2500.0,
                "reason": "fits",
            },
        },
    )
    body = login("auditor").get(m.get_absolute_url()).content.decode()
    assert "192.0.2.10" in body and "arthur" in body
    assert 'id="error-details"' in body and "level" in body and "str1" in body
    table = body[body.index('id="predicted-vs-actual"') :]
    for text in ("42500 ms", "61000 ms", "300 ms", "420 ms", "2500 MiB", "3072 MiB", "converges: fits"):
        assert text in table, text
