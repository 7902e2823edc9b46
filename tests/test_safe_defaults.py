"""Safe by default: production settings fail closed, secrets rotate and leave
no files behind, GET pages write nothing, logins are throttled, sockets close
when their user loses the right to them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from cryptography.fernet import Fernet
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.views.debug import get_default_exception_reporter_filter

from hosts import gateway, inventory
from hosts.certificates import secrets as secrets_module
from hosts.certificates import store as certstore
from hosts.certificates.errors import CertificateProblem
from hosts.certificates.models import Certificate
from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.consumers import MigrationConsumer
from migrator.roles import OPERATORS
from tests import pki

from .conftest import PASSWORD
from .test_migration_model import make_migration

BASE = Path(settings.BASE_DIR)
FERNET = Fernet.generate_key().decode()
PRODUCTION = {
    "SECRET_KEY": "x7Gq2" * 12,
    "SECRETS_KEYS": FERNET,
    "AUDIT_KEY": "k9Rt4" * 12,
    "ALLOWED_HOSTS": "dashboard.example.com",
    "DATABASE_URL": "postgres://migrator@db.example.com:5432/vmmigrator",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py in a clean environment: none of the demo's or the tests' settings."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEMO", "SECRET_KEY", "SECRETS_KEYS", "DEBUG")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------ production settings


def test_it_refuses_to_start_without_production_settings():
    result = manage("check", "--deploy")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "VM Migrator refuses to start: set SECRET_KEY (a long random string) and SECRETS_KEYS (Fernet keys, "
        "comma-separated) in the environment (README, 'Running in production'), or DEMO=1 for the demo lab."
    ]


def test_it_refuses_the_demo_key_and_a_missing_secrets_key():
    result = manage("check", "--deploy", SECRET_KEY="demo-only-secret-key-change-me", SECRETS_KEYS=FERNET)
    assert result.returncode != 0 and "set SECRET_KEY" in result.stderr
    result = manage("check", SECRET_KEY=PRODUCTION["SECRET_KEY"])
    assert result.returncode != 0
    assert "SECRETS_KEYS" in result.stderr and "set SECRET_KEY" not in result.stderr


def test_the_documented_production_settings_pass_the_deploy_check():
    result = manage("check", "--deploy", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    without_audit_key = manage("check", "--deploy", **{**PRODUCTION, "AUDIT_KEY": ""})
    assert "migrator.W005" in without_audit_key.stdout + without_audit_key.stderr


def test_production_defaults_are_secure():
    code = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.SECURE_HSTS_SECONDS, s.LIBVIRT_ALLOW_TEST_DRIVER, s.LIBVIRT_SOCKET_DIRS)"
    )
    result = manage("shell", "--no-imports", "-c", code, **PRODUCTION)
    assert result.stdout.split() == ["False", "True", "True", "True", "31536000", "False", "[]"]
    demo = manage("shell", "--no-imports", "-c", code, DEMO="1")
    assert demo.stdout.split()[:6] == ["False", "False", "False", "False", "0", "True"]


def test_error_pages_never_show_connection_strings_or_keys():
    reporter = get_default_exception_reporter_filter()
    safe = reporter.get_safe_settings()
    for name in ("REDIS_URL", "DATABASES", "CHANNEL_LAYERS", "RQ_QUEUES", "SECRET_KEY", "SECRETS_KEYS", "AUDIT_KEY"):
        assert safe[name] == reporter.cleansed_substitute, name


# ------------------------------------------------------------------- secrets


@pytest.fixture
def ca_cert(db, settings, tmp_path):
    settings.TLS_PKI_DIR = str(tmp_path / "pki")
    return pki.make_ca("Lab CA")


def test_there_is_no_key_file_outside_the_demo(settings, tmp_path):
    settings.SECRETS_KEYS = []
    settings.DEVELOPMENT = False
    settings.SECRETS_KEY_FILE = tmp_path / "secrets.key"
    with pytest.raises(CertificateProblem) as refused:
        secrets_module.secret_keys()
    assert "set SECRETS_KEYS" in refused.value.message
    assert not settings.SECRETS_KEY_FILE.exists()


def test_rotate_secrets_re_encrypts_every_key_under_the_newest(ca_cert, settings, capsys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SECRETS_KEYS = [old]
    ca = certstore.store_upload("ca", ca_cert.pem)
    clients = [
        certstore.store_upload("client", c.pem, c.key_pem(), ca=ca)
        for c in (pki.make_client(ca_cert), pki.make_client(ca_cert, "dashboard-2"))
    ]

    settings.SECRETS_KEYS = [new, old]
    call_command("rotate_secrets")
    assert capsys.readouterr().out.startswith("re_encrypted=2 already_current=0")

    settings.SECRETS_KEYS = [new]  # the old key retired
    for client in clients:
        assert Certificate.objects.get(pk=client.pk).decrypted_key_pem()
    assert AuditEvent.objects.filter(action="secrets.rotated").count() == 1

    call_command("rotate_secrets")
    assert capsys.readouterr().out.startswith("re_encrypted=0 already_current=2")


def test_rotate_secrets_changes_nothing_when_a_key_is_missing(ca_cert, settings):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    ca = certstore.store_upload("ca", ca_cert.pem)
    issued = pki.make_client(ca_cert)
    client = certstore.store_upload("client", issued.pem, issued.key_pem(), ca=ca)
    before = bytes(Certificate.objects.get(pk=client.pk).encrypted_key)

    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]  # the old one lost
    with pytest.raises(Exception, match="opens with none of SECRETS_KEYS"):
        call_command("rotate_secrets")
    assert bytes(Certificate.objects.get(pk=client.pk).encrypted_key) == before


def test_deleting_a_host_removes_its_key_files(ca_cert, settings, login, django_capture_on_commit_callbacks):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    host = Host.objects.create(name="host-b", uri="qemu+tls://10.0.0.2/system", migration_address="10.0.0.2")
    ca = certstore.store_upload("ca", ca_cert.pem)
    client = pki.make_client(ca_cert)
    certstore.store_upload("client", client.pem, client.key_pem(), ca=ca, assign_hosts=[host])
    from hosts.connection import connect_uri

    connect_uri(host)
    root = Path(settings.TLS_PKI_DIR)
    written = [p for p in root.iterdir() if p.name.startswith(f"{host.pk}-")]
    assert written and (written[0] / "clientkey.pem").exists()
    # An older directory whose host lost its assignment some other way goes too.
    orphan = root / "987654-0123456789abcdef"
    orphan.mkdir(mode=0o700)
    (orphan / "clientkey.pem").write_bytes(b"key")

    with django_capture_on_commit_callbacks(execute=True):
        response = login("admin").post(reverse("hosts:remove", args=[host.pk]))
    assert response.status_code == 302
    assert not Host.objects.filter(pk=host.pk).exists()
    assert list(root.iterdir()) == []


# ------------------------------------------------------------- GET writes nothing


def _writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE")]


@pytest.fixture
def wizard_vm(test_host):
    other = Host.objects.create(name="other", uri="test:///default")
    inventory.refresh_host(other)
    return test_host.vms.get(name="test"), other


def test_the_destination_step_writes_nothing_and_creates_no_pool(login, wizard_vm):
    vm, _other = wizard_vm
    conn = libvirt.open("test:///default")
    pools_before = sorted(conn.listStoragePools() + conn.listDefinedStoragePools())
    client = login("operator")
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("migrator:new"), {"vm": vm.pk})
    assert response.status_code == 200
    assert _writes(queries.captured_queries) == []
    assert sorted(conn.listStoragePools() + conn.listDefinedStoragePools()) == pools_before


def test_a_read_only_look_says_it_did_not_see_a_directory_no_pool_covers(test_host):
    conn = libvirt.open("test:///default")
    created = []
    real_create = libvirt.virConnect.storagePoolCreateXML

    def spy(self, xml, flags=0):
        created.append(xml)
        return real_create(self, xml, flags)

    libvirt.virConnect.storagePoolCreateXML = spy
    try:
        unseen = gateway.path_info("test:///default", "/nowhere/disk.qcow2", probe=False)
        assert not unseen.seen and not created
        probed = gateway.path_info("test:///default", "/nowhere/disk.qcow2")
        assert probed.seen and not probed.exists
    finally:
        libvirt.virConnect.storagePoolCreateXML = real_create
    assert conn.listStoragePools() == libvirt.open("test:///default").listStoragePools()


def test_exports_write_no_audit_row_on_get(login, db):
    make_migration(state="failed")
    client = login("auditor")
    before = AuditEvent.objects.count()
    for name in ("migrator:export_csv", "migrator:export_json"):
        assert client.get(reverse(name)).status_code == 405
    assert AuditEvent.objects.count() == before
    assert client.post(reverse("migrator:export_csv")).status_code == 200
    assert AuditEvent.objects.filter(action="migrations.exported").count() == 1


# --------------------------------------------------------------- smaller holes


def test_only_superusers_reach_django_rq(client, users):
    staff = users["operator"]
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get("/django-rq/").status_code == 403
    client.force_login(users["admin"])
    assert client.get("/django-rq/").status_code == 200


def test_security_admins_see_no_migration_records(login, test_host):
    vm = test_host.vms.get(name="test")
    make_migration(vm_uuid=vm.uuid, vm_name=vm.name, source=test_host, source_name=test_host.name)
    client = login("security")
    home = client.get(reverse("home")).content.decode()
    assert "Running migrations" not in home and "Migrating now" not in home
    vm_page = client.get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert "Migrations of this VM" not in vm_page and "migration #" not in vm_page
    host_page = client.get(reverse("hosts:detail", args=[test_host.pk])).content.decode()
    assert "migrating" in host_page and "/migrations/" not in host_page
    operator_page = login("operator").get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert "Migrations of this VM" in operator_page


def test_a_body_over_the_cap_is_refused_before_parsing(login, settings):
    settings.REQUEST_MAX_BODY_BYTES = 64 * 1024
    response = login("security").post(
        reverse("hosts:certificate_upload"), {"kind": "ca", "cert": "A" * (100 * 1024)}, follow=False
    )
    assert response.status_code == 413
    assert "too large" in response.content.decode()


def test_repeated_wrong_passwords_lock_the_login_out(client, users, settings):
    url = reverse("login")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post(url, {"username": "olivia", "password": "wrong"})
        assert response.status_code in (200, 429)
    response = client.post(url, {"username": "olivia", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert AuditEvent.objects.filter(action="auth.locked_out", object_repr="olivia").exists()
    assert not client.session.get("_auth_user_id")


# ------------------------------------------------------------------ websockets


@pytest.mark.django_db(transaction=True)
async def test_a_demoted_users_open_socket_is_closed(users, settings):
    settings.WEBSOCKET_RECHECK_S = 60  # the push, not the timer, closes it
    m = await sync_to_async(make_migration)()
    comm = WebsocketCommunicator(MigrationConsumer.as_asgi(), f"/ws/migrations/{m.pk}/")
    comm.scope["user"] = users["operator"]
    comm.scope["url_route"] = {"kwargs": {"pk": m.pk}}
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "history"

    group = await sync_to_async(Group.objects.get)(name=OPERATORS)
    await sync_to_async(users["operator"].groups.remove)(group)

    revoked = await comm.receive_json_from(timeout=5)
    assert revoked["type"] == "revoked" and "reload the page" in revoked["message"]
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


@pytest.mark.django_db(transaction=True)
async def test_an_open_socket_is_rechecked_on_a_timer(users, settings):
    settings.WEBSOCKET_RECHECK_S = 0.2
    m = await sync_to_async(make_migration)()
    comm = WebsocketCommunicator(MigrationConsumer.as_asgi(), f"/ws/migrations/{m.pk}/")
    comm.scope["user"] = users["auditor"]
    comm.scope["url_route"] = {"kwargs": {"pk": m.pk}}
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=5)

    # Deactivated behind the dashboard's back (no signal): the timer catches it.
    from django.contrib.auth import get_user_model

    await sync_to_async(get_user_model().objects.filter(pk=users["auditor"].pk).update)(is_active=False)
    assert (await comm.receive_json_from(timeout=5))["type"] == "revoked"
    assert (await comm.receive_output(timeout=5))["code"] == 4403


def test_a_huge_cpu_range_is_refused_before_it_is_built():
    from hosts.gateway.migration import parse_cpuset

    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_cpuset("0-999999999999", 2)
    assert parse_cpuset("1,0-0", 2) == (True, True)


def test_a_user_name_longer_than_the_model_allows_is_refused_without_storing_it(client, users):
    response = client.post(reverse("login"), {"username": "u" * 10_000, "password": "x"})
    assert response.status_code == 200 and "at most 150 characters" in response.content.decode()


def test_volume_xml_is_built_from_names_as_data(test_host):
    """A disk name taken from a domain's XML cannot inject XML into libvirt's
    volume definition: quotes, brackets and ampersands stay part of the name."""
    hostile = "/default-pool/a'b\"<c>&d.img"
    gateway.create_volume("test:///default", hostile, "raw", 2**20)
    try:
        conn = libvirt.open("test:///default")
        assert conn.storagePoolLookupByName("default-pool").storageVolLookupByName("a'b\"<c>&d.img")
        assert gateway.path_info("test:///default", hostile).exists
    finally:
        gateway.delete_volume("test:///default", hostile)


def test_behind_a_proxy_the_forwarded_address_is_audited_and_throttled(client, users, settings):
    settings.AXES_IPWARE_PROXY_COUNT = 1
    settings.AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    client.post(
        reverse("login"),
        {"username": "olivia", "password": "wrong"},
        REMOTE_ADDR="10.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.7, 10.0.0.1",
    )
    assert AuditEvent.objects.get(action="auth.login_failed").client_address == "203.0.113.7"
