"""Migrations through the API, without the lab (libvirt's test driver
answers the inventory): every endpoint for anonymous, wrong and right roles,
the wizard's validation as field errors, idempotent creates, the long-poll,
cancel and actions, pre-checks, predictions and dirty-rate readings."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from migrator.audit.models import AuditEvent
from migrator.models import DirtyRateMeasurement, Migration, MigrationState

from .api_helpers import anonymous, token_client
from .test_migration_model import make_migration
from .test_wizard import _passing_report

pytestmark = pytest.mark.django_db


@pytest.fixture
def vm(two_hosts):
    return two_hosts[0].vms.get(name="test")


@pytest.fixture
def passing_prechecks(monkeypatch):
    # Two test-driver hosts are one host to the pre-checks, which refuse them;
    # the lab test (tests/test_api_lab.py) runs the real ones.
    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())


def ask(client, vm, destination, **body):
    headers = {name: body.pop(name) for name in list(body) if name.startswith("HTTP_")}
    return client.post(
        "/api/v1/migrations/", {"vm": vm.pk, "destination": destination.pk, **body}, format="json", **headers
    )


# ------------------------------------------------------------------ list and detail


def test_it_refuses_the_list_to_anonymous_and_to_security_admins(users):
    assert anonymous().get("/api/v1/migrations/").status_code == 401
    response = token_client(users["security"]).get("/api/v1/migrations/")
    assert response.status_code == 403
    assert response.json() == {"detail": "Your role does not allow this."}
    assert token_client(users["outsider"]).get("/api/v1/migrations/").status_code == 403


def test_it_lists_migrations_with_the_history_filters(users):
    make_migration(state=MigrationState.SUCCEEDED, vm_name="web", downtime_ms=40)
    make_migration(state=MigrationState.FAILED, vm_name="db", vm_uuid="2" * 36)
    client = token_client(users["auditor"])
    body = client.get("/api/v1/migrations/").json()
    assert body["count"] == 2 and {m["vm_name"] for m in body["results"]} == {"web", "db"}
    body = client.get("/api/v1/migrations/?state=succeeded").json()
    assert [(m["vm_name"], m["downtime_ms"], m["state"]) for m in body["results"]] == [("web", 40, "succeeded")]
    assert body["results"][0]["url"] == f"/api/v1/migrations/{body['results'][0]['id']}/"


def test_a_bad_filter_is_a_field_error_not_an_empty_list(users):
    response = token_client(users["operator"]).get("/api/v1/migrations/?state=flying&created_from=yesterday")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"state", "created_from"}
    assert "flying" in errors["state"][0]


def test_the_detail_has_samples_events_and_the_live_state(users):
    m = make_migration()
    m.claim(1, "h")
    m.progress({"time_elapsed": 500, "data_total": 1000, "data_processed": 250, "data_remaining": 750})
    client = token_client(users["operator"])
    body = client.get(f"/api/v1/migrations/{m.pk}/").json()
    assert body["state"] == "running" and body["live"]["state"] == "running"
    assert [s["data_processed_bytes"] for s in body["samples"]] == [250]
    assert body["live"]["available_actions"]
    assert client.get(f"/api/v1/migrations/{m.pk}/?samples=0").json()["samples"] == []


def test_an_unknown_migration_is_a_plain_404(users):
    client = token_client(users["operator"])
    for path in ("/api/v1/migrations/999999/", "/api/v1/migrations/abc/"):
        response = client.get(path)
        assert response.status_code == 404
        assert "detail" in response.json()


@pytest.mark.django_db(transaction=True)
def test_wait_holds_the_answer_until_the_state_changes(users):
    m = make_migration()
    client = token_client(users["auditor"])

    def finish_soon():
        time.sleep(1.0)
        Migration.objects.get(pk=m.pk).request_cancel(None)
        connection.close()

    finisher = threading.Thread(target=finish_soon)
    finisher.start()
    started = time.monotonic()
    body = client.get(f"/api/v1/migrations/{m.pk}/?wait=20").json()
    waited = time.monotonic() - started
    finisher.join()
    assert body["state"] == "cancelled"
    assert 0.5 < waited < 15


def test_wait_returns_at_once_when_the_state_already_differs(users):
    m = make_migration(state=MigrationState.SUCCEEDED)
    client = token_client(users["auditor"])
    started = time.monotonic()
    assert client.get(f"/api/v1/migrations/{m.pk}/?wait=30&state=running").json()["state"] == "succeeded"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("wait", ["soon", "-1", "100000"])
def test_a_bad_wait_is_a_field_error(users, wait):
    m = make_migration()
    response = token_client(users["auditor"]).get(f"/api/v1/migrations/{m.pk}/?wait={wait}")
    assert response.status_code == 400 and "wait" in response.json()["errors"]


# ------------------------------------------------------------------ create


def test_only_operators_start_migrations(users, vm, two_hosts):
    assert ask(anonymous(), vm, two_hosts[1]).status_code == 401
    for role in ("auditor", "security", "outsider"):
        assert ask(token_client(users[role]), vm, two_hosts[1]).status_code == 403
    assert not Migration.objects.exists()


def test_a_request_without_vm_or_destination_names_both(users):
    response = token_client(users["operator"]).post("/api/v1/migrations/", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"vm", "destination"}


def test_unknown_vms_hosts_and_fields_are_field_errors(users, vm, two_hosts):
    client = token_client(users["operator"])
    response = client.post("/api/v1/migrations/", {"vm": 999999, "destination": "nowhere"}, format="json")
    assert response.status_code == 400 and "There is no VM" in response.json()["errors"]["vm"][0]
    response = client.post(
        "/api/v1/migrations/", {"vm": vm.uuid, "destination": "nowhere"}, format="json"
    )  # a VM by its UUID, a host by its name
    assert "There is no host 'nowhere'" in response.json()["errors"]["destination"][0]
    response = ask(client, vm, two_hosts[1], bandwith_mib_s=10)
    assert response.status_code == 400 and "Unknown field" in response.json()["errors"]["bandwith_mib_s"][0]
    response = ask(client, vm, two_hosts[0])
    assert "already runs on testhost" in response.json()["errors"]["destination"][0]


def test_the_pre_checks_refuse_with_the_wizards_messages(users, vm, two_hosts):
    response = ask(token_client(users["operator"]), vm, two_hosts[1])
    assert response.status_code == 400
    body = response.json()
    assert body["errors"]["non_field_errors"], body
    assert body["detail"] == body["errors"]["non_field_errors"][0]
    assert not Migration.objects.exists()


def test_the_forms_own_rules_come_back_per_field(users, vm, two_hosts, passing_prechecks):
    client = token_client(users["operator"])
    response = ask(client, vm, two_hosts[1], compression_level=3, max_downtime_ms="soon")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["compression_level"] == ["A compression level needs a compression method; choose one."]
    assert "max_downtime_ms" in errors
    assert not Migration.objects.exists()


def test_an_operator_starts_a_migration_audited_via_api(users, vm, two_hosts, passing_prechecks):
    response = ask(token_client(users["operator"]), vm, two_hosts[1], bandwidth_mib_s=50, allow_postcopy=True)
    assert response.status_code == 201, response.json()
    body = response.json()
    m = Migration.objects.get()
    assert response["Location"] == f"/api/v1/migrations/{m.pk}/" and body["id"] == m.pk
    assert m.parameters["bandwidth_mib_s"] == 50 and m.started_by == users["operator"]
    assert m.precheck_report == _passing_report().as_list() and m.prediction
    event = AuditEvent.objects.get(action="migration.started")
    assert event.details["via"] == "API" and event.actor == users["operator"]


def test_a_second_migration_of_the_same_vm_is_a_conflict(users, vm, two_hosts, passing_prechecks):
    client = token_client(users["operator"])
    first = ask(client, vm, two_hosts[1]).json()
    response = ask(client, vm, two_hosts[1])
    assert response.status_code == 409
    assert f"migration #{first['id']}" in response.json()["detail"]


def test_a_retried_create_with_its_idempotency_key_starts_one_migration(users, vm, two_hosts, passing_prechecks):
    client = token_client(users["operator"])
    first = ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="k-1")
    again = ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Migration.objects.count() == 1
    other = ask(client, vm, two_hosts[1], bandwidth_mib_s=5, HTTP_IDEMPOTENCY_KEY="k-1")
    assert other.status_code == 422 and "different request" in other.json()["detail"]


def test_idempotency_keys_are_per_user(users, vm, two_hosts, passing_prechecks):
    from .conftest import make_user

    ask(token_client(users["operator"]), vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="shared")
    second = make_user("otto", "operators")
    response = ask(token_client(second), vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="shared")
    assert response.status_code == 409  # its own request: the VM is already being migrated
    assert "Idempotent-Replayed" not in response


def test_a_refused_create_is_not_remembered_under_its_key(users, vm, two_hosts, monkeypatch):
    client = token_client(users["operator"])
    assert ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="k-2").status_code == 400
    assert ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="k-2").status_code == 400
    # Its cause fixed, the same request with the same key is tried afresh.
    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())
    fixed = ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="k-2")
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed
    response = ask(client, vm, two_hosts[1], HTTP_IDEMPOTENCY_KEY="x" * 201)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["detail"]


# ------------------------------------------------------------------ cancel and actions


def test_an_operator_cancels_a_waiting_migration_once(users):
    m = make_migration(state=MigrationState.WAITING)
    assert token_client(users["auditor"]).post(f"/api/v1/migrations/{m.pk}/cancel/").status_code == 403
    client = token_client(users["operator"])
    response = client.post(f"/api/v1/migrations/{m.pk}/cancel/")
    assert response.status_code == 200 and response.json()["detail"] == "Cancelled."
    assert response.json()["migration"]["state"] == "cancelled"
    again = client.post(f"/api/v1/migrations/{m.pk}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    event = AuditEvent.objects.get(action="migration.cancelled")
    assert event.details["via"] == "API"


def test_actions_apply_only_while_running_and_say_why(users):
    m = make_migration(state=MigrationState.WAITING)
    client = token_client(users["operator"])
    response = client.post(f"/api/v1/migrations/{m.pk}/actions/", {"kind": "force_complete"}, format="json")
    assert response.status_code == 409 and "only while it runs" in response.json()["detail"]
    response = client.post(f"/api/v1/migrations/{m.pk}/actions/", {"kind": "teleport"}, format="json")
    assert response.status_code == 400 and "kind" in response.json()["errors"]


def test_an_operator_changes_the_bandwidth_of_a_running_migration(users):
    m = make_migration()
    m.claim(1, "h")
    client = token_client(users["operator"])
    response = client.post(f"/api/v1/migrations/{m.pk}/actions/", {"kind": "bandwidth", "value": 0}, format="json")
    assert response.status_code == 409 and "from 1 to" in response.json()["detail"]
    response = client.post(f"/api/v1/migrations/{m.pk}/actions/", {"kind": "bandwidth", "value": 64}, format="json")
    assert response.status_code == 200, response.json()
    action = m.actions.get()
    assert (action.kind, action.value, action.via) == ("bandwidth", 64, "API")


def test_only_an_interrupted_post_copy_resumes(users):
    m = make_migration(state=MigrationState.WAITING)
    response = token_client(users["operator"]).post(f"/api/v1/migrations/{m.pk}/resume/")
    assert response.status_code == 409 and "Only an interrupted post-copy" in response.json()["detail"]


# ------------------------------------------------------------------ pre-checks, predictions, dirty rate


def test_prechecks_return_the_wizards_report_and_start_nothing(users, vm, two_hosts):
    assert token_client(users["auditor"]).post("/api/v1/prechecks/", {}, format="json").status_code == 403
    response = token_client(users["operator"]).post(
        "/api/v1/prechecks/", {"vm": vm.pk, "destination": two_hosts[1].pk}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False and body["verdict"] == "blocked"
    assert any(c["status"] == "fail" for c in body["checks"])
    assert body["errors"]["non_field_errors"]
    assert not Migration.objects.exists()


def test_predictions_cover_the_chosen_parameters_and_each_policy(users, vm, two_hosts, passing_prechecks):
    response = token_client(users["operator"]).post(
        "/api/v1/predictions/", {"vm": vm.pk, "destination": two_hosts[1].pk}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["prediction"] and len(body["policies"]) >= 3
    assert not Migration.objects.exists()


def test_dirty_rate_readings_for_every_role_and_measuring_for_operators(users, vm):
    DirtyRateMeasurement.objects.create(
        vm_uuid=vm.uuid, vm_name=vm.name, host_name="testhost", series="s1", window_s=1, dirty_rate_mib_s=12.5
    )
    body = token_client(users["security"]).get(f"/api/v1/vms/{vm.pk}/dirty-rate/").json()
    assert [r["dirty_rate_mib_s"] for r in body["readings"]] == [12.5]
    assert token_client(users["auditor"]).post(f"/api/v1/vms/{vm.pk}/dirty-rate/", {}).status_code == 403
    response = token_client(users["operator"]).post(
        f"/api/v1/vms/{vm.pk}/dirty-rate/", {"window_s": 0, "duration_s": 5}, format="json"
    )
    assert response.status_code in (400, 409)
    assert response.json()["detail"]
    assert token_client(users["operator"]).get("/api/v1/vms/999999/dirty-rate/").status_code == 404
