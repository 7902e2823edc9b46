"""Batches on stored inventory: starting an evacuation puts the host in
maintenance and queues one waiting migration per plan step under the
limits; cancelling drops the waiting ones; a batch ends with its last
migration and reports predicted against actual; leaving maintenance lets
migrations go to the host again. The pages and the commands go through the
same code."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from migrator import jobs
from migrator.actions import Requester
from migrator.audit.models import AuditEvent
from migrator.fleet import batches
from migrator.models import Batch, BatchState, Migration, MigrationState
from migrator.planning.evacuation import plan_evacuation
from tests.test_evacuation_plan import host, vm

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch):
    monkeypatch.setattr(jobs, "enqueue_migration", lambda pk: None)


@pytest.fixture
def site():
    a, b, c = host("a"), host("b"), host("c")
    guests = [vm(a, f"g{i}", 512) for i in range(4)]
    return a, b, c, guests


def test_an_evacuation_enters_maintenance_and_queues_every_vm(site, users, django_capture_on_commit_callbacks):
    a, b, c, guests = site
    plan = plan_evacuation(a, policy="minimal-downtime")
    with django_capture_on_commit_callbacks(execute=True):
        batch = batches.start(a, plan, Requester(users["operator"]))
    a.refresh_from_db()
    assert a.in_maintenance
    records = list(batch.migrations.order_by("created_at", "pk"))
    assert [m.vm_name for m in records] == [s.vm_name for s in plan.steps]
    assert {m.destination_name for m in records} == {"b", "c"}
    # a sends 2 at once (the default): the other two wait, saying so.
    assert sorted(m.state for m in records) == ["queued", "queued", "waiting", "waiting"]
    reasons = [m.wait_reason for m in records if m.state == "waiting"]
    assert reasons == [
        "a already sends 2 (limit 2).",
        "a sends 2 and 1 earlier waiting migration(s) go first (limit 2).",
    ]
    assert all(m.parameters.get("policy") == "minimal-downtime" for m in records)
    assert AuditEvent.objects.filter(action="batch.started").exists()
    assert AuditEvent.objects.filter(action="host.maintenance_entered").exists()
    with pytest.raises(batches.BatchRefused, match="already being evacuated"):
        batches.start(a, plan, Requester(users["operator"]))


def test_cancelling_drops_the_waiting_and_the_batch_reports(site, users, django_capture_on_commit_callbacks):
    a, b, c, guests = site
    with django_capture_on_commit_callbacks(execute=True):
        batch = batches.start(a, plan_evacuation(a), Requester(users["operator"]))
    running = list(batch.migrations.filter(state=MigrationState.QUEUED))
    for m in running:
        m.claim()
    said = batches.cancel(batch, Requester(users["operator"]))
    assert said == "Dropped 2 migration(s); 2 still running finish by themselves."
    assert batch.migrations.filter(state=MigrationState.CANCELLED).count() == 2
    batch.refresh_from_db()
    assert batch.state == BatchState.CANCELLING
    running[0].finish({"time_elapsed": 4000, "downtime": 50})
    running[1].fail("The link went down.", vm_location="a")
    batches.settle(batch)
    batch.refresh_from_db()
    assert batch.state == BatchState.CANCELLED
    report = batches.report(batch)
    assert report.succeeded == 1
    assert running[1].vm_name in report.left_on_source
    assert report.actual_total_s is not None and report.predicted_total_s > 0


def test_a_vm_gone_since_the_review_is_not_migrated(site, users):
    a, b, c, guests = site
    plan = plan_evacuation(a)
    guests[0].delete()
    batch = batches.start(a, plan, Requester(users["operator"]))
    assert batch.migrations.count() == 3
    assert "g0: no longer running on a" in batch.note


def test_leaving_maintenance_lets_waiting_migrations_start(site, users, django_capture_on_commit_callbacks):
    a, b, c, guests = site
    b.in_maintenance = True
    b.save()
    m = jobs.queue_migration(vm=guests[0], destination=b, parameters={}, report=[], user=users["operator"])
    jobs.dispatch()
    m.refresh_from_db()
    assert m.state == MigrationState.WAITING and "b is in maintenance" in m.wait_reason
    with django_capture_on_commit_callbacks(execute=True):
        assert batches.leave_maintenance(b, Requester(users["operator"]))
    m.refresh_from_db()
    assert m.state == MigrationState.QUEUED


def test_the_pages_plan_without_writing_then_start_and_show_the_batch(site, login):
    a, b, c, guests = site
    client = login("operator")
    page = client.get(f"/hosts/{a.pk}/evacuate/")
    assert page.status_code == 200
    assert b'id="plan-steps"' in page.content and b"nothing has changed" in page.content
    assert not Batch.objects.exists() and not Migration.objects.exists()
    a.refresh_from_db()
    assert not a.in_maintenance
    started = client.post(f"/hosts/{a.pk}/evacuate/", {"policy": "minimal-downtime"})
    batch = Batch.objects.get()
    assert started.status_code == 302 and started["Location"] == batch.get_absolute_url()
    detail = client.get(batch.get_absolute_url()).content.decode()
    assert 'id="batch-migrations"' in detail and "g0" in detail
    assert client.get(f"/hosts/{a.pk}/").content.decode().count("Leave maintenance") == 1
    assert login("auditor").get(f"/hosts/{a.pk}/evacuate/").status_code == 403


def test_a_bulk_move_plans_the_chosen_vms_to_one_host(site, login):
    a, b, c, guests = site
    client = login("operator")
    query = {"vm": [guests[0].pk, guests[1].pk], "destination": b.pk}
    page = client.get(f"/hosts/{a.pk}/move/", query)
    assert page.status_code == 200
    assert page.content.decode().count("<td>b</td>") == 2
    client.post(f"/hosts/{a.pk}/move/", {**query, "policy": "minimal-downtime"})
    batch = Batch.objects.get()
    assert batch.kind == "bulk" and {m.destination_name for m in batch.migrations.all()} == {"b"}
    a.refresh_from_db()
    assert not a.in_maintenance
    bad = client.get(f"/hosts/{a.pk}/move/", {"vm": "x"}, follow=True)
    assert "Choose the VMs from the list." in bad.content.decode()


def test_the_commands_plan_evacuate_and_show_the_queue(site, users):
    a, b, c, guests = site
    out = io.StringIO()
    call_command("evacuate", "a", "--dry-run", stdout=out)
    assert "dry run: nothing was changed" in out.getvalue() and not Batch.objects.exists()
    with pytest.raises(CommandError, match="No host named 'zz'"):
        call_command("evacuate", "zz", "--dry-run")
    with pytest.raises(CommandError, match="Say who acts"):
        call_command("evacuate", "a")
    call_command("evacuate", "a", "--user", users["operator"].username, stdout=out)
    jobs.dispatch()
    out = io.StringIO()
    call_command("queue", stdout=out)
    text = out.getvalue()
    assert "waiting (2):" in text and "a already sends 2 (limit 2)." in text and "a: sends 2/2" in text
    waiting = Migration.objects.filter(state=MigrationState.WAITING).first()
    call_command("queue", "--cancel", str(waiting.pk), "--user", users["operator"].username, stdout=out)
    waiting.refresh_from_db()
    assert waiting.state == MigrationState.CANCELLED
    call_command("evacuate", "a", "--leave", "--user", users["operator"].username, stdout=out)
    a.refresh_from_db()
    assert not a.in_maintenance
