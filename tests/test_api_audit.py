"""The audit log through the API: auditors only, read only; the audit
page's filters; cursor pages that neither repeat nor skip rows while events
are recorded; no audit event written by reading; and the verification
verify_audit makes, before and after someone edits a row in the database."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from hosts.models import Host
from migrator.audit.models import AuditEvent

from .api_helpers import anonymous, token_client
from .test_audit_chain import tamper

pytestmark = pytest.mark.django_db

LIST = "/api/v1/audit/"
VERIFY = "/api/v1/audit/verify/"


@pytest.fixture
def auditor_api(users):
    return token_client(users["auditor"])


def record(n: int, prefix: str = "test.event") -> list[AuditEvent]:
    return [AuditEvent.record(f"{prefix}{i}", details={"i": i}) for i in range(n)]


def ids(body: dict) -> list[int]:
    return [row["id"] for row in body["results"]]


# ------------------------------------------------------------------ roles


def test_only_auditors_and_superusers_read_it(users):
    event = AuditEvent.record("test.event")
    urls = [LIST, f"{LIST}{event.pk}/", VERIFY]
    for url in urls:
        assert anonymous().get(url).status_code == 401
    for role in ("operator", "security", "outsider"):
        client = token_client(users[role])
        for url in urls:
            response = client.get(url)
            assert response.status_code == 403, (role, url)
            assert response.json() == {"detail": "Your role does not allow this."}
    for role in ("auditor", "admin"):
        client = token_client(users[role])
        for url in urls:
            assert client.get(url).status_code == 200, (role, url)


def test_nobody_writes_through_it(users):
    event = AuditEvent.record("test.event", details={"a": 1})
    before = AuditEvent.objects.count()
    detail = f"{LIST}{event.pk}/"
    writes = [
        ("post", LIST),
        ("post", VERIFY),
        ("put", detail),
        ("patch", detail),
        ("delete", detail),
        ("delete", LIST),
    ]
    for role, code in (("auditor", 405), ("admin", 405), ("operator", 403), ("security", 403)):
        client = token_client(users[role])
        for method, url in writes:
            response = getattr(client, method)(url, {"action": "forged"}, format="json")
            assert response.status_code == code, (role, method, url)
            assert "detail" in response.json()
    assert AuditEvent.objects.count() == before
    assert AuditEvent.objects.get(pk=event.pk).details == {"a": 1}


# ------------------------------------------------------------------ list and detail


def test_an_event_has_its_actor_object_details_address_and_chain(users, auditor_api):
    host = Host.objects.create(name="host-a", uri="test:///default")
    event = AuditEvent.record(
        "host.added", actor=users["admin"], obj=host, details={"uri": host.uri}, client_address="10.0.0.9"
    )

    body = auditor_api.get(f"{LIST}{event.pk}/").json()

    assert body == {
        "id": event.pk,
        "url": f"{LIST}{event.pk}/",
        "at": body["at"],
        "actor": "root-admin",
        "client_address": "10.0.0.9",
        "action": "host.added",
        "object_type": "hosts.host",
        "object_id": str(host.pk),
        "object_repr": "host-a",
        "object_page": host.get_absolute_url(),
        "details": {"uri": "test:///default"},
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    assert dt.datetime.fromisoformat(body["at"]) == event.at
    assert body["prev_hash"] == AuditEvent.objects.get(pk=event.pk - 1).hash
    [row] = auditor_api.get(f"{LIST}?action=host.added").json()["results"]
    assert row == body
    host.delete()
    assert auditor_api.get(f"{LIST}{event.pk}/").json()["object_page"] is None


def test_an_unknown_event_is_a_plain_404(auditor_api):
    for url in (f"{LIST}999999/", f"{LIST}abc/"):
        response = auditor_api.get(url)
        assert response.status_code == 404 and "detail" in response.json()


def test_it_filters_as_the_audit_page_does(users, auditor_api):
    host = Host.objects.create(name="host-a", uri="test:///default")
    added = AuditEvent.record("host.added", actor=users["admin"], obj=host)
    removed = AuditEvent.record("host.removed", actor=users["operator"], obj=host)
    login = AuditEvent.record("auth.login", actor=users["operator"])
    old = AuditEvent(action="test.old", at=timezone.now() - dt.timedelta(days=40))
    old.hash = old.compute_hash()  # out of the chain: verify is not this test's business
    old.save()

    def found(query: str) -> list[int]:
        response = auditor_api.get(f"{LIST}?{query}")
        assert response.status_code == 200, response.json()
        return ids(response.json())

    assert found("action=host.added") == [added.pk]
    assert found("action=host.*") == [removed.pk, added.pk]
    assert found("action=host.") == [removed.pk, added.pk]
    assert found("actor=OLIVIA") == [login.pk, removed.pk]
    assert found(f"object_type=hosts.host&object_id={host.pk}") == [removed.pk, added.pk]
    assert old.pk not in found("since=30d") and old.pk in found("")
    day = (timezone.now() - dt.timedelta(days=40)).date().isoformat()
    assert found(f"at_from={day}&at_to={day}") == [old.pk]


def test_a_bad_filter_is_a_field_error_not_an_empty_list(auditor_api):
    response = auditor_api.get(f"{LIST}?since=forever&at_from=yesterday")
    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == {"since", "at_from"}
    assert "forever" in body["errors"]["since"][0]
    response = auditor_api.get(f"{LIST}?at_from=2025-02-01&at_to=2025-01-01")
    assert response.status_code == 400
    assert "before its start" in response.json()["errors"]["at_to"][0]


def test_cursor_pages_neither_repeat_nor_skip_rows_while_events_arrive(auditor_api):
    first_batch = record(7)
    expected = [e.pk for e in reversed(first_batch)]

    page = auditor_api.get(f"{LIST}?action=test.*&page_size=3").json()
    assert page["previous"] is None and page["next"]
    assert ids(page) == expected[:3]
    seen = ids(page)
    while page["next"]:
        record(2, prefix="test.later")  # newer than every row paged so far
        page = auditor_api.get(page["next"]).json()
        seen += ids(page)

    assert seen == expected
    assert len(set(seen)) == len(seen)
    newest = ids(auditor_api.get(f"{LIST}?action=test.*&page_size=3").json())
    assert all(AuditEvent.objects.get(pk=pk).action.startswith("test.later") for pk in newest)


def test_an_invalid_cursor_is_a_plain_404(auditor_api):
    response = auditor_api.get(f"{LIST}?cursor=garbage")
    assert response.status_code == 404 and "detail" in response.json()


def test_reading_writes_no_audit_event(auditor_api):
    event = record(3)[-1]
    before = AuditEvent.objects.count()
    for url in (LIST, f"{LIST}?action=test.*", f"{LIST}{event.pk}/", VERIFY, f"{LIST}?since=forever"):
        auditor_api.get(url)
        auditor_api.head(url)
        auditor_api.options(url)
    assert AuditEvent.objects.count() == before


# ------------------------------------------------------------------ verification


def test_verify_reports_an_intact_chain(auditor_api):
    record(4)

    body = auditor_api.get(VERIFY).json()

    count = AuditEvent.objects.count()
    assert body["ok"] is True and body["count"] == body["intact"] == count
    assert body["first_broken"] is None and body["problems"] == []
    assert body["anchor"]["checked"] is False and body["anchor"]["ok"] is None
    assert any("No anchor of this database" in w for w in body["warnings"])
    assert body["message"] == f"{count} events, chain intact (hmac-sha256); no anchor checked."


def test_verify_checks_the_newest_anchor(auditor_api):
    record(2)
    call_command("audit_anchor", stdout=StringIO(), stderr=StringIO())

    body = auditor_api.get(VERIFY).json()

    assert body["ok"] is True and body["anchor"]["ok"] is True
    assert body["anchor"]["file"].startswith("anchor-")
    assert "holds" in body["message"] and body["warnings"] == []


def test_verify_names_the_first_row_edited_in_the_database(auditor_api):
    events = record(5)
    target = events[2]
    tamper(target.pk, details={"i": 99})

    body = auditor_api.get(VERIFY).json()

    assert body["ok"] is False
    assert body["first_broken"]["id"] == target.pk
    assert body["count"] == AuditEvent.objects.filter(pk__lte=target.pk).count()
    assert body["intact"] == body["count"] - 1
    assert f"Event {target.pk} (test.event2" in body["first_broken"]["problem"]
    assert "content altered or forged" in body["first_broken"]["problem"]
    assert body["problems"][0].startswith(f"Audit chain broken after {body['intact']} intact events.")
    assert body["message"] == " ".join(body["problems"])
