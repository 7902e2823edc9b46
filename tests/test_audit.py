"""The audit trail: append-only records, the read-only admin, the hash chain
and its verifier, the audit events for logins and role changes, and the
audit log page. The chain against an attacker, the anchors and the
migration outcomes: tests/test_audit_chain.py."""

import datetime as dt
from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from hosts.models import Host
from migrator.audit.models import AppendOnlyError, AuditEvent
from migrator.models import Migration, MigrationEvent, MigrationSample
from migrator.roles import AUDITORS, OPERATORS

from .conftest import PASSWORD
from .test_audit_chain import tamper, with_table_rights


@pytest.fixture(autouse=True)
def anchor_dir(settings, tmp_path):
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"


def make_migration(**fields) -> Migration:
    values = {
        "vm_uuid": "00000000-0000-0000-0000-000000000001",
        "vm_name": "web-1",
        "source_name": "host-a",
        "source_uri": "qemu+ssh://root@host-a/system",
        "destination_name": "host-b",
        "destination_uri": "qemu+ssh://root@host-b/system",
        "storage_class": "shared",
        "started_by_username": "olivia",
        "state": "failed",
        "error_message": "No route to host",
    }
    values.update(fields)
    return Migration.objects.create(**values)


@pytest.fixture
def migration(db) -> Migration:
    m = make_migration()
    m.log("failed", "No route to host")
    MigrationSample.from_stats(m, {"time_elapsed": 1000, "data_processed": 1 << 20})
    return m


def verify() -> str:
    """verify_audit's summary, its last line."""
    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue().splitlines()[-1]


def chain(n: int = 5) -> list[AuditEvent]:
    return [
        AuditEvent.record(f"test.event{i}", details={"i": i, "text": "héllo", "nested": {"b": [1, 2.5]}})
        for i in range(n)
    ]


# ------------------------------------------------------------- hash chain


@pytest.mark.django_db
def test_it_passes_an_empty_log():
    assert verify() == "0 events, chain intact; no anchor checked"


@pytest.mark.django_db
def test_it_passes_an_intact_chain():
    chain(5)
    AuditEvent.record("test.ipv6", client_address="2001:0DB8:0000::0001", details={"big": 10**18})
    AuditEvent.record("test.ipv4", client_address="192.0.2.7")
    # Values PostgreSQL's jsonb hands back differently from how Python wrote them.
    odd = [1e20, -0.0, 1e-7, 0.1, 1.0, float("nan"), "nul\x00byte", 12345678901234567890]
    AuditEvent.record("test.numbers", details={"values": odd, "when": timezone.now()})
    assert verify() == "8 events, chain intact; no anchor checked"


@pytest.mark.django_db
def test_it_detects_an_event_altered_in_the_database():
    events = chain(5)
    target = events[2]
    tamper(target.pk, details={"i": 99})
    with pytest.raises(CommandError) as caught:
        verify()
    message = str(caught.value)
    assert caught.value.returncode == 1
    assert f"Event {target.pk} " in message
    assert "recomputed hash" in message and target.hash in message
    assert "after 2 intact events" in message


@pytest.mark.django_db
def test_it_detects_an_altered_event_whose_hash_was_recomputed():
    events = chain(4)
    target = AuditEvent.objects.get(pk=events[1].pk)
    target.actor_username = "mallory"
    # Even with the key, re-hashing one event breaks the link of the next.
    tamper(target.pk, actor_username="mallory", hash=target.compute_hash())
    with pytest.raises(CommandError) as caught:
        verify()
    message = str(caught.value)
    assert f"Event {events[2].pk} " in message
    assert "prev_hash" in message and f"event {events[1].pk}'s hash" in message


@pytest.mark.django_db
def test_it_detects_an_event_removed_from_the_middle():
    events = chain(4)
    with with_table_rights(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE id = %s", [events[1].pk])
    with pytest.raises(CommandError) as caught:
        verify()
    assert f"Event {events[2].pk} " in str(caught.value)


# -------------------------------------------------------------- append-only


def test_it_refuses_to_change_or_delete_audit_events(db):
    event = AuditEvent.record("test.event", details={"a": 1})
    event.details = {"a": 2}
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(details={"a": 2})
    assert AuditEvent.objects.get(pk=event.pk).details == {"a": 1}


def test_it_refuses_to_change_or_delete_migration_records(migration):
    migration.error_message = "rewritten"
    with pytest.raises(AppendOnlyError):
        migration.save()
    with pytest.raises(AppendOnlyError):
        migration.delete()
    with pytest.raises(AppendOnlyError):
        Migration.objects.all().delete()
    assert Migration.objects.get(pk=migration.pk).error_message == "No route to host"


def test_it_still_runs_the_state_transitions(db):
    m = make_migration(state="queued", error_message="")
    assert m.claim(worker_pid=1, worker_host="w")
    assert m.finish({"time_elapsed": 2000, "downtime": 12, "data_processed": 1 << 30})
    m.refresh_from_db()
    assert (m.state, m.downtime_ms) == ("succeeded", 12)
    assert not m.fail("too late", vm_location="host-a")


def test_it_keeps_records_when_users_and_hosts_go(migration, users):
    host = Host.objects.create(name="host-x", uri="test:///default")
    other = make_migration(vm_uuid="u-2", source=host, started_by=users["operator"], cancelled_by=users["auditor"])
    AuditEvent.record("host.added", actor=users["operator"], obj=host)
    host.delete()
    users["operator"].delete()
    other.refresh_from_db()
    assert (other.source_id, other.started_by_id, other.started_by_username) == (None, None, "olivia")
    assert AuditEvent.objects.get(action="host.added").actor_username == "olivia"
    assert verify().startswith(f"{AuditEvent.objects.count()} events, chain intact")


# ------------------------------------------------------------------ admin

MODELS = {
    "migrator_migration": Migration,
    "migrator_migrationevent": MigrationEvent,
    "migrator_migrationsample": MigrationSample,
    "audit_auditevent": AuditEvent,
}
READ_ONLY_MODELS = [
    ("migrator_migration", lambda m: m.pk),
    ("migrator_migrationevent", lambda m: m.events.get().pk),
    ("migrator_migrationsample", lambda m: m.samples.get().pk),
    ("audit_auditevent", lambda m: AuditEvent.record("test.event", obj=m).pk),
]


@pytest.mark.parametrize("model, pk_of", READ_ONLY_MODELS)
def test_it_shows_records_read_only_in_the_admin_even_to_superusers(login, migration, model, pk_of):
    client = login("admin")
    pk = pk_of(migration)
    changelist = client.get(reverse(f"admin:{model}_changelist"))
    assert changelist.status_code == 200
    assert b"delete_selected" not in changelist.content
    view = client.get(reverse(f"admin:{model}_change", args=[pk]))
    assert view.status_code == 200
    assert b'name="_save"' not in view.content
    assert client.get(reverse(f"admin:{model}_add")).status_code == 403
    assert client.post(reverse(f"admin:{model}_add"), {}).status_code == 403
    assert client.post(reverse(f"admin:{model}_change", args=[pk]), {"state": "x"}).status_code == 403
    assert client.get(reverse(f"admin:{model}_delete", args=[pk])).status_code == 403
    assert client.post(reverse(f"admin:{model}_delete", args=[pk]), {"post": "yes"}).status_code == 403
    client.post(
        reverse(f"admin:{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [pk], "post": "yes"},
    )
    assert MODELS[model].objects.filter(pk=pk).exists()


@pytest.mark.parametrize("role", ["operator", "auditor", "security", "outsider"])
def test_it_keeps_everyone_else_out_of_the_admin(login, migration, role):
    client = login(role)
    url = reverse("admin:migrator_migration_change", args=[migration.pk])
    for response in (client.get(url), client.post(url, {"state": "succeeded"})):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert Migration.objects.get(pk=migration.pk).state == "failed"


def test_it_answers_no_write_method_on_the_review_pages(login, migration):
    exports = [reverse("migrator:export_csv"), reverse("migrator:export_json")]
    for role in ("operator", "auditor", "admin"):
        client = login(role)
        assert client.post(reverse("migrator:list"), {"state": "succeeded"}).status_code == 405, role
        for url in exports:  # an export is audited, so it is a POST; a GET is refused
            assert client.get(url, {"state": "succeeded"}).status_code == 405, (role, url)
        expected = 405 if role != "operator" else 403
        assert client.post(reverse("migrator:audit"), {}).status_code == expected
    assert Migration.objects.get(pk=migration.pk).state == "failed"


def test_it_audits_host_changes_made_in_the_admin(login, users):
    client = login("admin")
    response = client.post(
        reverse("admin:hosts_host_add"),
        {"name": "host-z", "uri": "test:///default", "peer_uri": "", "migration_address": "", "shared_prefixes": ""},
    )
    assert response.status_code == 302, response.content
    host = Host.objects.get(name="host-z")
    added = AuditEvent.objects.get(action="host.added")
    assert (added.actor_username, added.object_id, added.details["via"]) == ("root-admin", str(host.pk), "admin")

    make_migration(state="running", source=host, vm_uuid="busy")
    assert client.post(reverse("admin:hosts_host_delete", args=[host.pk]), {"post": "yes"}).status_code == 403
    Migration.objects.filter(source=host).update(state="failed")
    assert client.post(reverse("admin:hosts_host_delete", args=[host.pk]), {"post": "yes"}).status_code == 302
    assert not Host.objects.filter(pk=host.pk).exists()
    assert AuditEvent.objects.get(action="host.removed").object_repr == "host-z"


def test_it_lets_only_superusers_manage_users(login, users):
    staff = users["operator"]
    staff.is_staff = True
    staff.save()
    staff.user_permissions.set(Permission.objects.all())
    client = login("operator")
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 403
    assert client.get(reverse("admin:auth_user_change", args=[users["auditor"].pk])).status_code == 403
    assert login("admin").get(reverse("admin:auth_user_changelist")).status_code == 200


# ---------------------------------------------------------------- signals


def test_it_records_failed_logins(client, users):
    response = client.post(reverse("login"), {"username": "olivia", "password": "wrong"}, REMOTE_ADDR="198.51.100.9")
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.details == {"username": "olivia"}
    assert event.client_address == "198.51.100.9"
    assert (event.object_type, event.object_id) == ("auth.user", str(users["operator"].pk))
    assert event.actor is None

    client.post(reverse("login"), {"username": "ghost", "password": "x"})
    ghost = AuditEvent.objects.filter(action="auth.login_failed").order_by("-pk").first()
    assert (ghost.object_repr, ghost.object_id) == ("ghost", "")
    assert verify().startswith(f"{AuditEvent.objects.count()} events, chain intact")


def test_it_records_successful_logins(client, users):
    client.post(reverse("login"), {"username": "arthur", "password": PASSWORD})
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor == users["auditor"]


def test_it_records_role_changes(users):
    user = users["outsider"]
    operators, auditors = Group.objects.get(name=OPERATORS), Group.objects.get(name=AUDITORS)
    user.groups.add(operators)
    added = AuditEvent.objects.filter(action="user.role_added", object_id=str(user.pk)).get()
    assert added.details == {"role": OPERATORS, "roles_now": [OPERATORS]}

    auditors.user_set.add(user)
    operators.user_set.remove(user)
    user.groups.clear()
    events = AuditEvent.objects.filter(object_id=str(user.pk), action__startswith="user.role").order_by("pk")
    assert [(e.action, e.details["role"], e.details["roles_now"]) for e in events] == [
        ("user.role_added", OPERATORS, [OPERATORS]),
        ("user.role_added", AUDITORS, [AUDITORS, OPERATORS]),
        ("user.role_removed", OPERATORS, [AUDITORS]),
        ("user.role_removed", AUDITORS, []),
    ]


def test_it_records_superuser_grants_and_revocations(users):
    before = AuditEvent.objects.order_by("-pk").first().pk
    user = users["auditor"]
    user.is_superuser = True
    user.save()
    user.save()  # no change, no event
    user.is_superuser = False
    user.save(update_fields=["is_superuser"])
    User.objects.create_superuser("root2", password=PASSWORD)
    actions = list(
        AuditEvent.objects.filter(pk__gt=before, action__startswith="user.superuser")
        .order_by("pk")
        .values_list("action", "object_repr")
    )
    assert actions == [
        ("user.superuser_granted", "arthur"),
        ("user.superuser_revoked", "arthur"),
        ("user.superuser_granted", "root2"),
    ]


def test_it_attributes_role_changes_made_in_the_admin(login, users):
    target = users["outsider"]
    operators = Group.objects.get(name=OPERATORS)
    response = login("admin").post(
        reverse("admin:auth_user_change", args=[target.pk]),
        {
            "username": target.username,
            "first_name": "",
            "last_name": "",
            "email": "",
            "is_active": "on",
            "is_superuser": "on",
            "groups": [operators.pk],
            "date_joined_0": timezone.localtime(target.date_joined).strftime("%Y-%m-%d"),
            "date_joined_1": timezone.localtime(target.date_joined).strftime("%H:%M:%S"),
        },
        REMOTE_ADDR="203.0.113.5",
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    events = AuditEvent.objects.filter(object_id=str(target.pk)).exclude(action="auth.login").order_by("pk")
    assert [(e.action, e.actor_username, e.client_address) for e in events] == [
        ("user.superuser_granted", "root-admin", "203.0.113.5"),
        ("user.role_added", "root-admin", "203.0.113.5"),
    ]


# --------------------------------------------------------------- log page


@pytest.mark.parametrize(
    "role, status", [("auditor", 200), ("admin", 200), ("operator", 403), ("security", 403), ("outsider", 403)]
)
def test_it_shows_the_audit_log_to_auditors_only(login, role, status):
    assert login(role).get(reverse("migrator:audit")).status_code == status


def test_it_filters_the_audit_log(login, users, migration):
    old = AuditEvent.record("host.added", actor=users["admin"], details={"uri": "x"})
    tamper(old.pk, at=timezone.now() - dt.timedelta(days=3))
    AuditEvent.record("host.removed", actor=users["admin"])
    AuditEvent.record("migration.started", actor=users["operator"], obj=migration)
    AuditEvent.record("migration.cancelled", actor=users["operator"], obj=migration)
    client = login("auditor")

    def actions(**query) -> list[str]:
        response = client.get(reverse("migrator:audit"), query)
        assert response.status_code == 200
        return [row["event"].action for row in response.context["rows"]]

    assert actions(action="host.added") == ["host.added"]
    assert actions(action="host.*") == ["host.removed", "host.added"]
    assert actions(action="migration.") == ["migration.cancelled", "migration.started"]
    assert actions(actor="OLIVIA") == ["migration.cancelled", "migration.started"]
    assert actions(since="24h", actor="root-admin") == ["host.removed"]
    day = timezone.localtime(timezone.now() - dt.timedelta(days=3)).strftime("%Y-%m-%d")
    assert actions(at_from=day, at_to=day) == ["host.added"]
    assert actions(object_type="migrator.migration", object_id=str(migration.pk)) == [
        "migration.cancelled",
        "migration.started",
    ]


def test_it_links_events_to_objects_that_still_exist(login, users, migration):
    kept = Host.objects.create(name="host-kept", uri="test:///default")
    gone = Host.objects.create(name="host-gone", uri="test:///default")
    AuditEvent.record("host.added", obj=kept)
    AuditEvent.record("host.added", obj=gone)
    AuditEvent.record("migration.started", obj=migration)
    gone.delete()

    body = login("auditor").get(reverse("migrator:audit"), {"action": "host.added"}).content.decode()
    assert f'<a href="{kept.get_absolute_url()}">host-kept</a>' in body
    assert 'host-gone <span class="small text-muted">(no longer exists)</span>' in body
    body = login("auditor").get(reverse("migrator:audit"), {"action": "migration.started"}).content.decode()
    assert f'href="{migration.get_absolute_url()}"' in body

    # Users have no page of their own: superusers get the admin's.
    AuditEvent.record("user.role_added", obj=users["operator"])
    admin_url = reverse("admin:auth_user_change", args=[users["operator"].pk])
    assert admin_url in login("admin").get(reverse("migrator:audit")).content.decode()
    assert admin_url not in login("auditor").get(reverse("migrator:audit")).content.decode()


def test_it_links_a_migration_to_its_audit_events(login, migration):
    body = login("auditor").get(migration.get_absolute_url()).content.decode()
    assert f"object_type=migrator.migration&amp;object_id={migration.pk}" in body
    assert "object_type=" not in login("operator").get(migration.get_absolute_url()).content.decode()
