"""Hosts and VMs through the API, without the lab (libvirt's test driver
answers the inventory): reads for every role, writes for superusers only
through the host form (its URI allow-list and messages) with the host pages'
audit events, removing a host as its page does, refreshing by operators, the
VM filters and the migration a VM is in, and plain 404s for junk ids."""

from __future__ import annotations

import pytest

from hosts.forms import HostForm
from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.models import Migration, MigrationState

from .api_helpers import anonymous, token_client
from .test_migration_model import make_migration

pytestmark = pytest.mark.django_db

ROLES = ("operator", "auditor", "security", "admin")
NOT_SUPERUSERS = ("operator", "auditor", "security")
HOSTILE_URIS = [
    ("qemu+ssh://h/system?command=/tmp/x", "command="),
    ("qemu+ssh://h/system?keyfile=/root/.ssh/id_rsa", "keyfile="),
    ("qemu+tls://h/system?no_verify=1", "no_verify="),
    ("qemu+ssh://h/system?no_tty=1;command=/tmp/x", "';'"),
    ("qemu+ext:///system?command=/tmp/x", "run a program"),
    ("test:///etc/passwd", "test:///default"),
    ("qemu+ssh://root:secret@h/system", "password"),
]


@pytest.fixture(autouse=True)
def test_driver_allowed(settings):
    settings.LIBVIRT_ALLOW_TEST_DRIVER = True


@pytest.fixture
def vm(test_host):
    return test_host.vms.get(name="test")


def form_message(**values) -> dict[str, list[str]]:
    """What the host page's form says for these values."""
    form = HostForm({"enabled": "on", **values})
    assert not form.is_valid()
    return {name: [str(m) for m in messages] for name, messages in form.errors.items()}


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


# ------------------------------------------------------------------ reading


def test_it_refuses_anonymous_requests(test_host, vm):
    client = anonymous()
    for path in ("/api/v1/hosts/", f"/api/v1/hosts/{test_host.pk}/", "/api/v1/vms/", f"/api/v1/vms/{vm.pk}/"):
        assert client.get(path).status_code == 401, path
    assert client.post("/api/v1/hosts/", {"name": "x", "uri": "test:///default"}, format="json").status_code == 401
    assert client.post(f"/api/v1/hosts/{test_host.pk}/refresh/").status_code == 401
    assert client.delete(f"/api/v1/hosts/{test_host.pk}/").status_code == 401
    assert Host.objects.count() == 1


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_hosts_and_vms(users, test_host, vm, role):
    client = token_client(users[role])
    body = client.get("/api/v1/hosts/").json()
    assert body["count"] == 1
    row = body["results"][0]
    assert row["id"] == test_host.pk and row["name"] == "testhost" and row["uri"] == "test:///default"
    assert row["vm_count"] == test_host.vms.count() and row["running_vm_count"] == test_host.vms.running().count()
    assert row["url"] == f"/api/v1/hosts/{test_host.pk}/" and row["page"] == f"/hosts/{test_host.pk}/"
    assert client.get(f"/api/v1/hosts/{test_host.pk}/").json()["info"]["hostname"]
    vms = client.get("/api/v1/vms/").json()
    assert vms["count"] == test_host.vms.count()
    assert client.get(f"/api/v1/vms/{vm.pk}/").json()["uuid"] == vm.uuid


def test_an_outsider_without_a_role_reads_nothing(users, test_host, vm):
    client = token_client(users["outsider"])
    for path in ("/api/v1/hosts/", f"/api/v1/hosts/{test_host.pk}/", "/api/v1/vms/", f"/api/v1/vms/{vm.pk}/"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.json() == {"detail": "Your role does not allow this."}


def test_a_host_shows_its_inventory_limits_and_maintenance_and_no_secrets(users, test_host, settings):
    test_host.in_maintenance = True
    test_host.max_outgoing = 3
    test_host.save()
    body = token_client(users["auditor"]).get(f"/api/v1/hosts/{test_host.pk}/").json()
    assert body["in_maintenance"] is True and body["maintenance_since"] is None
    assert body["outgoing_limit"] == 3 and body["max_outgoing"] == 3
    assert body["incoming_limit"] == settings.MIGRATION_MAX_INCOMING and body["max_incoming"] is None
    assert body["reachable"] is True and body["inventory_error"] == "" and body["inventory_refreshed_at"]
    assert body["effective_peer_uri"] == "test:///default" and body["shared_prefixes"] == "/shared\n"
    assert body["hostname"] == test_host.info["hostname"] and body["libvirt_version"]
    assert body["vms"] == f"/api/v1/vms/?host={test_host.pk}"
    text = str(body).lower()
    for secret in ("private", "password", "key_pem", "secret"):
        assert secret not in text


def test_the_host_list_is_paginated(users, two_hosts):
    body = token_client(users["operator"]).get("/api/v1/hosts/?limit=1").json()
    assert body["count"] == 2 and len(body["results"]) == 1 and body["next"]
    assert body["results"][0]["name"] == "other"


# ------------------------------------------------------------------ writing: who may


@pytest.mark.parametrize("role", NOT_SUPERUSERS)
def test_only_superusers_change_hosts(users, test_host, role):
    client = token_client(users[role])
    detail = f"/api/v1/hosts/{test_host.pk}/"
    answers = [
        client.post("/api/v1/hosts/", {"name": "new", "uri": "qemu:///system"}, format="json"),
        client.put(detail, {"name": "renamed", "uri": "test:///default"}, format="json"),
        client.patch(detail, {"name": "renamed"}, format="json"),
        client.delete(detail),
    ]
    for response in answers:
        assert response.status_code == 403
        assert response.json() == {"detail": "Only a superuser may change this."}
    assert list(Host.objects.values_list("name", flat=True)) == ["testhost"]
    assert not AuditEvent.objects.filter(action__startswith="host.").exists()


# ------------------------------------------------------------------ create


def test_a_superuser_adds_a_host_and_its_inventory_is_read(users):
    client = token_client(users["admin"])
    response = client.post(
        "/api/v1/hosts/",
        {"name": "t", "uri": "test:///default", "shared_prefixes": ["/guest"], "migration_address": "10.0.0.9"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    host = Host.objects.get(name="t")
    body = response.json()
    assert response["Location"] == f"/api/v1/hosts/{host.pk}/" == body["url"]
    assert body["enabled"] is True and body["shared_prefixes"] == "/guest" and body["migration_address"] == "10.0.0.9"
    assert body["vm_count"] == host.vms.count() > 0 and body["reachable"] and body["info"]["hostname"]
    assert host.vms.get(name="test").storage_class == "shared"
    (event,) = events("host.added")
    assert event.actor == users["admin"] and event.object_id == str(host.pk)
    assert event.details == {"uri": "test:///default", "via": "API"}


def test_an_idempotent_add_is_done_once(users):
    client = token_client(users["admin"])
    headers = {"HTTP_IDEMPOTENCY_KEY": "add-t-once"}
    first = client.post("/api/v1/hosts/", {"name": "t", "uri": "test:///default"}, format="json", **headers)
    again = client.post("/api/v1/hosts/", {"name": "t", "uri": "test:///default"}, format="json", **headers)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert Host.objects.count() == 1 and len(events("host.added")) == 1


@pytest.mark.parametrize(("uri", "named"), HOSTILE_URIS)
def test_a_hostile_uri_is_refused_with_the_forms_message(users, uri, named):
    response = token_client(users["admin"]).post("/api/v1/hosts/", {"name": "evil", "uri": uri}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["errors"]["uri"] == form_message(name="evil", uri=uri)["uri"]
    assert named in body["errors"]["uri"][0]
    assert body["detail"] == f"uri: {body['errors']['uri'][0]}"
    assert not Host.objects.exists() and not events("host.added")


def test_a_hostile_peer_uri_is_refused_too(users):
    response = token_client(users["admin"]).post(
        "/api/v1/hosts/",
        {"name": "t", "uri": "test:///default", "peer_uri": "qemu+ssh://h/system?command=/tmp/x"},
        format="json",
    )
    assert response.status_code == 400
    assert "command=" in response.json()["errors"]["peer_uri"][0]
    assert not Host.objects.exists()


def test_the_test_driver_is_refused_outside_development(users, settings):
    settings.LIBVIRT_ALLOW_TEST_DRIVER = False
    response = token_client(users["admin"]).post(
        "/api/v1/hosts/", {"name": "t", "uri": "test:///default"}, format="json"
    )
    assert response.status_code == 400
    assert "LIBVIRT_ALLOW_TEST_DRIVER" in response.json()["errors"]["uri"][0]


def test_the_forms_other_refusals_are_field_errors(users, test_host):
    client = token_client(users["admin"])
    body = client.post("/api/v1/hosts/", {"name": "again", "uri": "test:///default"}, format="json").json()
    assert body["errors"] == {"uri": ["Another host already uses this URI; each host is registered once."]}
    body = client.post("/api/v1/hosts/", {}, format="json").json()
    assert set(body["errors"]) == {"name", "uri"}
    body = client.post(
        "/api/v1/hosts/", {"name": "x", "uri": "qemu:///system", "shared_prefixes": "mnt"}, format="json"
    )
    assert "is not an absolute path" in body.json()["errors"]["shared_prefixes"][0]
    body = client.post("/api/v1/hosts/", {"name": "x", "uri": "qemu:///system", "id": 5}, format="json").json()
    assert "read-only" in body["errors"]["id"][0] and "name, uri" in body["errors"]["id"][0]
    response = client.post("/api/v1/hosts/", ["name"], format="json")
    assert response.status_code == 400 and "JSON object" in response.json()["detail"]
    assert list(Host.objects.values_list("name", flat=True)) == ["testhost"]


# ------------------------------------------------------------------ update


def test_a_patch_changes_what_it_names_and_is_audited(users, test_host):
    client = token_client(users["admin"])
    response = client.patch(f"/api/v1/hosts/{test_host.pk}/", {"name": "renamed", "enabled": False}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["name"] == "renamed" and body["enabled"] is False
    assert body["uri"] == "test:///default" and body["shared_prefixes"] == "/shared"
    (event,) = events("host.changed")
    assert event.details == {"changed": {"name": "renamed", "enabled": False}, "via": "API"}


def test_changing_the_shared_prefixes_reads_the_inventory_again(users, test_host, vm):
    assert vm.storage_class == "non_shared"
    response = token_client(users["admin"]).patch(
        f"/api/v1/hosts/{test_host.pk}/", {"shared_prefixes": ["/guest"]}, format="json"
    )
    assert response.status_code == 200
    assert test_host.vms.get(pk=vm.pk).storage_class == "shared"
    assert events("host.changed")[0].details["changed"] == {"shared_prefixes": "/guest"}


def test_a_put_replaces_the_settings(users, test_host):
    test_host.migration_address = "10.0.0.1"
    test_host.enabled = False
    test_host.save()
    client = token_client(users["admin"])
    response = client.put(
        f"/api/v1/hosts/{test_host.pk}/", {"name": "testhost", "uri": "test:///default"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["migration_address"] == "" and body["shared_prefixes"] == "" and body["enabled"] is True
    response = client.put(f"/api/v1/hosts/{test_host.pk}/", {"name": "testhost"}, format="json")
    assert response.status_code == 400 and "uri" in response.json()["errors"]


def test_an_update_with_a_hostile_uri_changes_nothing(users, test_host):
    response = token_client(users["admin"]).patch(
        f"/api/v1/hosts/{test_host.pk}/", {"uri": "qemu+ssh://h/system?command=/tmp/x"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"]["uri"] == form_message(name="y", uri="qemu+ssh://h/system?command=/tmp/x")["uri"]
    assert Host.objects.get(pk=test_host.pk).uri == "test:///default" and not events("host.changed")


# ------------------------------------------------------------------ delete


def test_a_superuser_removes_a_host_and_keeps_its_migrations(
    users, test_host, monkeypatch, django_capture_on_commit_callbacks
):
    forgotten = []
    monkeypatch.setattr("hosts.certificates.signals.forget_material", forgotten.append)
    monkeypatch.setattr("hosts.certificates.signals.forget_orphaned_material", lambda: None)
    migration = make_migration(source=test_host, source_name=test_host.name, state=MigrationState.SUCCEEDED)
    pk = test_host.pk
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(users["admin"]).delete(f"/api/v1/hosts/{pk}/")
    assert response.status_code == 200
    assert response.json() == {"detail": "Removed testhost. Its past migrations stay in the history."}
    assert not Host.objects.filter(pk=pk).exists()
    assert forgotten == [pk]  # the host's TLS material on disk goes with it
    migration = Migration.objects.get(pk=migration.pk)
    assert migration.source is None and migration.source_name == "testhost"
    (event,) = events("host.removed")
    assert event.object_id == str(pk) and event.details == {"uri": "test:///default", "via": "API"}


def test_a_host_that_migrations_use_is_not_removed(users, test_host):
    make_migration(destination=test_host, destination_name=test_host.name)
    response = token_client(users["admin"]).delete(f"/api/v1/hosts/{test_host.pk}/")
    assert response.status_code == 409
    assert response.json() == {"detail": "testhost has migrations in progress; wait for them to end or cancel them."}
    assert Host.objects.filter(pk=test_host.pk).exists() and not events("host.removed")


# ------------------------------------------------------------------ refresh


@pytest.mark.parametrize("role", ("operator", "admin"))
def test_operators_refresh_a_host(users, test_host, role):
    test_host.vms.all().delete()
    response = token_client(users[role]).post(f"/api/v1/hosts/{test_host.pk}/refresh/")
    assert response.status_code == 200
    body = response.json()
    count = test_host.vms.count()
    assert count > 0 and body["detail"] == f"Read testhost: {count} VMs."
    assert body["host"]["vm_count"] == count and body["host"]["id"] == test_host.pk


@pytest.mark.parametrize("role", ("auditor", "security"))
def test_other_roles_do_not_refresh(users, test_host, role):
    response = token_client(users[role]).post(f"/api/v1/hosts/{test_host.pk}/refresh/")
    assert response.status_code == 403
    assert response.json() == {"detail": "Your role does not allow this."}


def test_an_unreachable_host_is_a_409_in_plain_words(users):
    host = Host.objects.create(name="down", uri="qemu+tcp://127.0.0.1:1/system")
    response = token_client(users["operator"]).post(f"/api/v1/hosts/{host.pk}/refresh/")
    assert response.status_code == 409
    body = response.json()
    host.refresh_from_db()
    assert host.inventory_error
    assert body["detail"] == f"Could not read down: {host.inventory_error}"
    assert body["host"]["reachable"] is False and body["host"]["inventory_error"] == host.inventory_error


# ------------------------------------------------------------------ VMs


def test_the_vm_list_filters_by_host_state_and_name(users, two_hosts):
    first, other = two_hosts
    client = token_client(users["security"])

    def names(query: str) -> list[tuple[str, str]]:
        response = client.get(f"/api/v1/vms/{query}")
        assert response.status_code == 200, response.json()
        return [(vm["name"], vm["host"]["name"]) for vm in response.json()["results"]]

    everything = names("")
    assert ("test", "other") in everything and ("test", "testhost") in everything
    assert {h for _, h in names(f"?host={other.pk}")} == {"other"}
    assert {h for _, h in names("?host=testhost")} == {"testhost"}
    assert names("?q=TES") == [("test", "other"), ("test", "testhost")]
    assert names("?q=nothing-like-it") == []
    assert names("?state=running") == [("test", "other"), ("test", "testhost")]
    first.vms.update(state="shut off")
    assert names("?state=shutoff&host=testhost") == [("test", "testhost")]
    assert names("?state=shut%20off&host=other") == []


def test_a_bad_vm_filter_is_a_field_error(users, test_host):
    client = token_client(users["operator"])
    response = client.get("/api/v1/vms/?host=nowhere")
    assert response.status_code == 400
    assert "There is no host 'nowhere'" in response.json()["errors"]["host"][0]
    response = client.get("/api/v1/vms/?state=flying")
    assert response.status_code == 400
    assert "flying" in response.json()["errors"]["state"][0] and "running" in response.json()["errors"]["state"][0]


def test_a_vm_shows_its_size_disks_and_host(users, test_host, vm):
    body = token_client(users["auditor"]).get(f"/api/v1/vms/{vm.pk}/").json()
    assert body["name"] == "test" and body["uuid"] == vm.uuid and body["state"] == vm.state
    assert body["host"] == {"id": test_host.pk, "name": "testhost", "url": f"/api/v1/hosts/{test_host.pk}/"}
    assert body["vcpus"] == vm.vcpus and body["memory_mib"] == vm.memory_mib and body["memory_kib"] == vm.memory_kib
    assert body["storage_class"] == vm.storage_class and body["details"]["arch"] == body["arch"]
    disk = next(d for d in body["disks"] if d["target"] == "vda")
    assert disk["source"] and disk["reason"] and disk["migratable"] in (True, False)
    assert body["migrating"] is False and body["active_migration"] is None
    assert body["dirty_rate"] == f"/api/v1/vms/{vm.pk}/dirty-rate/" and body["page"] == f"/hosts/vms/{vm.pk}/"


def test_a_vm_names_its_active_migration_for_those_who_see_migrations(users, vm):
    make_migration(vm_uuid=vm.uuid, state=MigrationState.SUCCEEDED)
    active = make_migration(vm_uuid=vm.uuid, vm_name=vm.name)
    for role in ("operator", "auditor"):
        client = token_client(users[role])
        assert client.get(f"/api/v1/vms/{vm.pk}/").json()["active_migration"] == active.pk
        (row,) = client.get("/api/v1/vms/?q=test").json()["results"]
        assert row["active_migration"] == active.pk and row["migrating"] is True
    body = token_client(users["security"]).get(f"/api/v1/vms/{vm.pk}/").json()
    assert body["migrating"] is True and body["active_migration"] is None


def test_the_dirty_rate_route_still_answers(users, vm):
    response = token_client(users["auditor"]).get(f"/api/v1/vms/{vm.pk}/dirty-rate/")
    assert response.status_code == 200
    assert response.json()["vm"] == vm.pk and response.json()["readings"] == []


# ------------------------------------------------------------------ junk ids


def test_junk_and_unknown_ids_are_plain_404s(users, test_host):
    reader, admin, operator = (token_client(users[r]) for r in ("auditor", "admin", "operator"))
    answers = [
        reader.get("/api/v1/hosts/abc/"),
        reader.get("/api/v1/hosts/999999/"),
        reader.get("/api/v1/vms/abc/"),
        reader.get("/api/v1/vms/999999/"),
        operator.post("/api/v1/hosts/abc/refresh/"),
        operator.post("/api/v1/hosts/999999/refresh/"),
        admin.delete("/api/v1/hosts/abc/"),
        admin.patch("/api/v1/hosts/999999/", {"name": "x"}, format="json"),
    ]
    for response in answers:
        assert response.status_code == 404
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["detail"]
    assert reader.get("/api/v1/hosts/abc/").json() == {"detail": "A host's id is a whole number."}


def test_an_overlong_name_search_is_a_field_error(users, test_host):
    response = token_client(users["auditor"]).get("/api/v1/vms/", {"q": "x" * 60_000})
    assert response.status_code == 400
    assert response.json()["errors"]["q"] == ["Search with at most 255 characters of the VM's name."]
