"""Evacuations and bulk moves through the API, on stored inventory: the plan
is a dry run; a batch starts once per Idempotency-Key, enters maintenance
and queues each step; its report; cancelling; leaving maintenance; every
refusal a plain message."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from migrator import jobs
from migrator.audit.models import AuditEvent
from migrator.models import Batch, Migration, MigrationState
from tests.test_evacuation_plan import host, vm

from .api_helpers import anonymous, token_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch):
    monkeypatch.setattr(jobs, "enqueue_migration", lambda pk: None)


@pytest.fixture
def site():
    a, b, c = host("a"), host("b"), host("c")
    guests = [vm(a, f"g{i}", 512) for i in range(4)]
    return a, b, c, guests


def test_the_plan_is_for_operators_and_writes_nothing(site, users):
    a, *_ = site
    assert anonymous().post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {}, format="json").status_code == 401
    assert token_client(users["auditor"]).post(f"/api/v1/hosts/{a.pk}/evacuation-plan/").status_code == 403
    response = token_client(users["operator"]).post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["kind"] == "evacuation"
    steps = body["plan"]["steps"]
    assert sorted(s["vm_name"] for s in steps) == ["g0", "g1", "g2", "g3"]
    assert {s["destination_name"] for s in steps} <= {"b", "c"}
    assert not Migration.objects.exists() and not Batch.objects.exists()
    a.refresh_from_db()
    assert not a.in_maintenance


def test_a_bulk_move_plans_the_chosen_vms_to_one_host(site, users):
    a, b, _, guests = site
    client = token_client(users["operator"])
    body = {"vms": [guests[0].pk, guests[2].pk], "destination": "b"}
    response = client.post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", body, format="json")
    assert response.status_code == 200
    plan = response.json()
    assert plan["kind"] == "bulk"
    assert [s["vm_name"] for s in plan["plan"]["steps"]] == ["g0", "g2"]
    assert {s["destination_name"] for s in plan["plan"]["steps"]} == {"b"}


def test_plan_refusals_name_the_thing_and_the_fix(site, users):
    a, b, _, guests = site
    other = vm(b, "elsewhere", 256)
    client = token_client(users["operator"])
    wrong_vm = client.post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {"vms": [other.pk]}, format="json")
    assert wrong_vm.status_code == 400
    assert f"do not run on a; list them with /api/v1/vms/?host={a.pk}" in wrong_vm.json()["detail"]
    itself = client.post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {"destination": "a"}, format="json")
    assert itself.json()["errors"]["destination"] == ["Choose a destination other than the source, or 'best'."]
    nowhere = client.post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {"destination": "zz"}, format="json")
    assert "There is no host 'zz'" in nowhere.json()["detail"]
    policy = client.post(f"/api/v1/hosts/{a.pk}/evacuation-plan/", {"policy": "fastest-ever"}, format="json")
    assert policy.status_code == 400 and "policy" in policy.json()["errors"]
    assert client.post("/api/v1/hosts/9999/evacuation-plan/").status_code == 404


def test_an_evacuation_starts_once_per_key_and_reports(site, users, django_capture_on_commit_callbacks):
    a, *_ = site
    client = token_client(users["operator"])
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(
            "/api/v1/batches/", {"source": "a", "policy": "minimal-downtime"}, format="json", HTTP_IDEMPOTENCY_KEY="e1"
        )
    assert first.status_code == 201, first.json()
    again = client.post(
        "/api/v1/batches/", {"source": "a", "policy": "minimal-downtime"}, format="json", HTTP_IDEMPOTENCY_KEY="e1"
    )
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert Batch.objects.count() == 1
    batch = first.json()
    assert first["Location"] == f"/api/v1/batches/{batch['id']}/"
    assert len(batch["report"]["rows"]) == 4
    a.refresh_from_db()
    assert a.in_maintenance
    assert sorted(Migration.objects.values_list("state", flat=True)) == ["queued", "queued", "waiting", "waiting"]
    assert AuditEvent.objects.filter(action="batch.started").exists()

    # A second evacuation of the same host finds nothing left to move, and says so.
    twice = client.post("/api/v1/batches/", {"source": "a"}, format="json")
    assert twice.status_code == 409, twice.json()
    assert twice.json() == {"detail": "Nothing to migrate off a: the plan has no VM that can move."}

    auditor = token_client(users["auditor"])
    assert [b["id"] for b in auditor.get("/api/v1/batches/").json()["results"]] == [batch["id"]]
    assert auditor.get(f"/api/v1/batches/{batch['id']}/").json()["report"]["done"] == 0
    assert auditor.post(f"/api/v1/batches/{batch['id']}/cancel/").status_code == 403

    cancelled = client.post(f"/api/v1/batches/{batch['id']}/cancel/", {}, format="json")
    assert cancelled.status_code == 200, cancelled.json()
    assert MigrationState.WAITING not in Migration.objects.values_list("state", flat=True)

    left = client.post(f"/api/v1/hosts/{a.pk}/leave-maintenance/")
    assert left.json() == {"detail": "a left maintenance: migrations may go to it again."}
    assert client.post(f"/api/v1/hosts/{a.pk}/leave-maintenance/").json() == {"detail": "a was not in maintenance."}


def test_a_batch_with_a_bad_start_time_starts_nothing(site, users):
    response = token_client(users["operator"]).post(
        "/api/v1/batches/", {"source": "a", "start_at": "next tuesday-ish"}, format="json"
    )
    assert response.status_code == 400 and "start_at" in response.json()["errors"]
    assert not Batch.objects.exists() and not Migration.objects.exists()


def test_a_scheduled_bulk_move_waits_for_its_time(site, users, django_capture_on_commit_callbacks):
    a, b, _, guests = site
    soon = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(users["operator"]).post(
            "/api/v1/batches/",
            {"source": a.pk, "vms": [guests[1].pk], "destination": "b", "start_at": soon.isoformat()},
            format="json",
        )
    assert response.status_code == 201, response.json()
    m = Migration.objects.get()
    assert m.vm_name == "g1" and m.destination_name == "b"
    assert m.state == MigrationState.WAITING and m.not_before == soon
