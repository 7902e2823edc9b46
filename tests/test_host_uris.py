"""The allow-list of host URIs (hosts.uris): no URI option that runs a
program, reads a file of the writer's choosing or skips a check reaches libvirt,
whether it comes through the host form or straight from the database."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from hosts import gateway, inventory, uris
from hosts.connection import connect_uri
from hosts.forms import HostForm
from hosts.lab.layout import HOSTS, Layout
from hosts.models import Host
from migrator import settings as project_settings
from migrator.executor import Executor

from .test_migration_model import make_migration

SOCKETS = "/srv/lab"
LAB_SOCKET = f"{SOCKETS}/hosts/A/run/libvirt-sock"


@pytest.fixture(autouse=True)
def policy(settings):
    settings.LIBVIRT_SOCKET_DIRS = [Path(SOCKETS)]
    settings.LIBVIRT_ALLOW_TEST_DRIVER = True
    return settings


def refusal_of(uri: str) -> str:
    with pytest.raises(ValidationError) as caught:
        uris.check_uri(uri)
    return " ".join(caught.value.messages)


# (URI, what the message must name)
HOSTILE = [
    # options that run a program, read a file or skip a check
    ("qemu+ssh://host-b/system?command=/tmp/x", "command="),
    ("qemu+ssh://host-b/system?netcat=/tmp/x", "netcat="),
    ("qemu+ssh://host-b/system?keyfile=/root/.ssh/id_rsa", "keyfile="),
    ("qemu+ssh://host-b/system?known_hosts=/etc/shadow", "known_hosts="),
    ("qemu+ssh://host-b/system?known_hosts_verify=ignore", "known_hosts_verify="),
    ("qemu+ssh://host-b/system?sshauth=privkey", "sshauth="),
    ("qemu+ssh://host-b/system?name=qemu:///session", "name="),
    ("qemu+ssh://host-b/system?proxy=native", "proxy="),
    ("qemu+ssh://host-b/system?mode=legacy", "mode="),
    ("qemu+ssh://host-b/system?socket=/var/run/other-sock", "socket="),
    ("qemu+tls://host-b/system?no_verify=1", "no_verify="),
    ("qemu+tls://host-b/system?pkipath=/tmp/mine", "pkipath="),
    ("qemu+tls://host-b/system?tls_priority=NORMAL", "tls_priority="),
    ("qemu+tcp://10.0.0.2/system?no_tty=1", "no_tty="),
    ("qemu:///system?socket=" + LAB_SOCKET, "socket="),
    ("qemu+ssh://host-b/system?no_tty=yes", "no_tty="),
    ("qemu+ssh://host-b/system?whatever=1", "whatever="),
    ("qemu+ssh://host-b/system?no_tty=1&no_tty=0", "no_tty="),
    ("qemu+unix:///system?socket=" + LAB_SOCKET + "&socket=/tmp/x", "socket="),
    ("qemu+ssh://host-b/system?no_tty=1&", "empty option"),
    # libvirt's own query reading: ';' separates, '%' decodes
    ("qemu+ssh://host-b/system?no_tty=1;command=/tmp/x", "';'"),
    ("qemu+ssh://host-b/system?comm%61nd=/tmp/x", "'%'"),
    # qemu+unix sockets
    ("qemu+unix:///system?socket=/any/path", "socket="),
    ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", "socket="),
    ("qemu+unix:///system?socket=" + SOCKETS + "/../etc/x", "socket="),
    ("qemu+unix:///system?socket=" + SOCKETS + "/hosts/./A/libvirt-sock", "socket="),
    ("qemu+unix:///system?socket=" + SOCKETS + "//A/libvirt-sock", "socket="),
    ("qemu+unix:///system?socket=" + SOCKETS + "-other/libvirt-sock", "socket="),
    ("qemu+unix:///system?socket=" + SOCKETS, "socket="),
    ("qemu+unix:///system?socket=hosts/A/libvirt-sock", "socket="),
    ("qemu+unix:///system?socket=", "socket="),
    # the test driver reads any file but its own default
    ("test:///etc/passwd", "test:///default"),
    ("test:///default?x", "test:///default"),
    ("test://host/default", "test:///default"),
    # the rest of the URI
    ("qemu+ssh://host-b/system#frag", "fragment"),
    ("qemu+ssh://root:secret@host-b/system", "password"),
    ("qemu+ssh://host-b/system ", "space"),
    ("qemu+ssh://host-b/sys tem", "space"),
    ("qemu+ssh://host-b/system\n?command=/tmp/x", "space"),
    ("qemu+ssh://host-b/system\t", "space"),
    ("qemu+ssh://host-b/system\x00", "control"),
    ("qemu+ssh://host-b/system\x7f", "control"),
    ("qemu+ssh://hôst-b/system", "non-ASCII"),
    ("qemu+ssh://-oProxyCommand=x/system", "starts with '-'"),
    ("qemu+ssh://root@-oProxyCommand=x/system", "starts with '-'"),
    ("qemu+ssh://host_b/system", "host name"),
    ("qemu+ssh://host..b/system", "host name"),
    ("qemu+ssh://999.1.1.1/system", "host name"),
    ("qemu+ssh://[not-v6]/system", "host name"),
    ("qemu+ssh://[fe80::1%25eth0]/system", "host name"),
    ("qemu+ssh://root@host@evil/system", "user name"),
    ("qemu+ssh:///system", "needs a host name"),
    ("qemu+ssh://host-b:0/system", "port"),
    ("qemu+ssh://host-b:65536/system", "port"),
    ("qemu+ssh://host-b:22x/system", "port"),
    ("qemu+ssh://host-b:/system", "port"),
    ("qemu+ssh://-root@host-b/system", "user name"),
    ("qemu+ssh://ro$ot@host-b/system", "user name"),
    ("qemu+tls://root@host-b/system", "user name"),
    ("qemu+ssh://host-b/session", "/session"),
    ("qemu:///session", "/session"),
    ("qemu+ssh://host-b/", "/system"),
    ("qemu+ssh://host-b", "/system"),
    ("qemu+ssh://host-b/system/", "/system"),
    ("qemu://host-b/system", "qemu+tls://"),
    ("qemu+unix://host-b/system", "no host name"),
    ("qemu+ext:///system?command=/tmp/x", "run a program"),
    ("qemu+libssh2://host-b/system?known_hosts=/x", "Use a libvirt URI such as"),
    ("xen:///system", "Use a libvirt URI such as"),
    ("http://host", "Use a libvirt URI such as"),
    ("host-b", "Use a libvirt URI such as"),
]


@pytest.mark.parametrize(("uri", "named"), HOSTILE, ids=[uri for uri, _ in HOSTILE])
def test_it_refuses_hostile_uris_naming_the_part(uri, named):
    message = refusal_of(uri)
    assert named in message
    assert uris.refusal(uri) == message


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("qemu+ssh://host-b/system?keyfile=/root/.ssh/id_rsa", "/root/.ssh"),
        ("qemu+unix:///system?socket=/etc/private/sock", "/etc/private"),
        ("qemu+ssh://-oProxyCommand=touch_x/system", "ProxyCommand"),
        ("qemu+ssh://root:hunter2@host-b/system", "hunter2"),
        ("qemu+ssh://host-b/system?<script>=1", "<script>"),
        ("test:///etc/passwd", "/etc/passwd"),
    ],
)
def test_it_does_not_echo_the_hostile_value(uri, secret):
    assert secret not in refusal_of(uri)


def test_an_option_refusal_says_which_options_are_allowed():
    message = refusal_of("qemu+ssh://host-b/system?command=/tmp/x")
    assert message == (
        "The URI option command= makes libvirt run a program instead of ssh; remove it. "
        f"Allowed options: no_tty (qemu+ssh) and socket (qemu+unix, below {SOCKETS})."
    )


ALLOWED = [
    "qemu+ssh://host-b/system",
    "qemu+ssh://root@host-c/system",
    "qemu+ssh://admin.user_1@host-c.example.org:2222/system?no_tty=1",
    "qemu+ssh://root@10.0.0.2/system?no_tty=0",
    "qemu+tls://host-c/system",
    "qemu+tls://10.0.0.2:16514/system",
    "qemu+tcp://b/system",
    "qemu+tcp://10.77.0.2/system",
    "qemu+tcp://[fd00::2]:16509/system",
    "qemu+tcp://host-b.example.org./system",
    "qemu:///system",
    "qemu+unix:///system",
    f"qemu+unix:///system?socket={LAB_SOCKET}",
    "test:///default",
]


@pytest.mark.parametrize("uri", ALLOWED)
def test_it_accepts_the_allowed_forms(uri):
    uris.check_uri(uri)
    assert uris.refusal(uri) is None


def test_the_test_driver_is_refused_when_not_allowed(settings):
    settings.LIBVIRT_ALLOW_TEST_DRIVER = False
    assert "LIBVIRT_ALLOW_TEST_DRIVER" in refusal_of("test:///default")


def test_no_socket_is_accepted_without_socket_dirs(settings):
    settings.LIBVIRT_SOCKET_DIRS = []
    assert "socket=" in refusal_of(f"qemu+unix:///system?socket={LAB_SOCKET}")
    assert "socket is not accepted" in refusal_of("qemu+ssh://host-b/system?command=/tmp/x")
    uris.check_uri("qemu+unix:///system")


def test_the_labs_uris_pass_under_the_test_settings(settings):
    """hosts.lab registers these (Lab.register) with settings.LAB_DIR as root."""
    # Back to the project's own settings: [LAB_DIR] and the test driver, in the demo and the tests.
    settings.LIBVIRT_SOCKET_DIRS = project_settings.LIBVIRT_SOCKET_DIRS
    settings.LIBVIRT_ALLOW_TEST_DRIVER = project_settings.LIBVIRT_ALLOW_TEST_DRIVER
    assert Path(settings.LAB_DIR) in settings.LIBVIRT_SOCKET_DIRS and settings.LIBVIRT_ALLOW_TEST_DRIVER
    uris.check_uri("test:///default")
    layout = Layout(settings.LAB_DIR)
    for key in HOSTS:
        uris.check_uri(layout.uri(key))
        uris.check_uri(layout.peer_uri(key))
    uris.check_uri(layout.tls_uri("B"))


@pytest.mark.django_db
def test_the_model_validates_both_uris():
    host = Host(name="h", uri="qemu+ssh://host-b/system", peer_uri="qemu+tcp://10.0.0.2/system?command=/tmp/x")
    with pytest.raises(ValidationError) as caught:
        host.full_clean()
    assert set(caught.value.message_dict) == {"peer_uri"}
    assert "command=" in caught.value.message_dict["peer_uri"][0]
    host.peer_uri = ""
    host.full_clean()


# ------------------------------------------------------------------ the form and the pages


@pytest.fixture
def no_libvirt(monkeypatch):
    """Fails the test if anything reaches libvirt."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"libvirt was called: {args}")

    monkeypatch.setattr(libvirt, "open", refuse)
    monkeypatch.setattr(libvirt, "openAuth", refuse)
    monkeypatch.setattr(libvirt, "openReadOnly", refuse)
    return calls


@pytest.mark.django_db
def test_the_host_form_shows_the_message():
    form = HostForm({"name": "x", "uri": "qemu+ssh://host-b/system?command=/tmp/x", "enabled": "on"})
    assert not form.is_valid()
    assert "command=" in form.errors["uri"][0] and "run a program" in form.errors["uri"][0]


@pytest.mark.django_db
def test_the_add_host_page_refuses_a_hostile_uri_and_creates_nothing(login, no_libvirt):
    response = login("admin").post(
        reverse("hosts:add"),
        {"name": "evil", "uri": "qemu+ssh://host-b/system?command=/tmp/x", "enabled": "on"},
    )
    assert response.status_code == 200
    assert "The URI option command= makes libvirt run a program instead of ssh; remove it." in (
        response.content.decode()
    )
    assert not Host.objects.filter(name="evil").exists()
    assert no_libvirt == []


@pytest.mark.django_db
def test_the_edit_page_refuses_a_hostile_peer_uri(login, no_libvirt):
    host = Host.objects.create(name="b", uri="qemu+tcp://10.0.0.2/system")
    response = login("admin").post(
        reverse("hosts:edit", args=[host.pk]),
        {"name": "b", "uri": host.uri, "peer_uri": "qemu+unix:///system?socket=/tmp/evil", "enabled": "on"},
    )
    assert response.status_code == 200
    assert "The URI option socket= names a path outside" in response.content.decode()
    host.refresh_from_db()
    assert host.peer_uri == ""
    assert no_libvirt == []


# ------------------------------------------------------------------ rows written around the validator


@pytest.mark.django_db
def test_connect_uri_refuses_a_hostile_uri_from_the_database(no_libvirt):
    host = Host.objects.create(name="old", uri="qemu+ssh://host-b/system?command=/tmp/x")  # no validators run
    with pytest.raises(gateway.GatewayError) as caught:
        connect_uri(host)
    message = caught.value.message
    assert message.startswith("The libvirt URI of old is not allowed, so it is not opened:")
    assert "command=" in message

    inventory.refresh_host(host)
    host.refresh_from_db()
    assert "is not allowed" in host.inventory_error and "command=" in host.inventory_error
    assert host.inventory_refreshed_at is None
    assert no_libvirt == []


@pytest.mark.django_db
def test_connect_uri_refuses_a_stored_pkipath():
    host = Host.objects.create(name="tls", uri="qemu+tls://10.0.0.2/system?pkipath=/tmp/mine")
    with pytest.raises(gateway.GatewayError, match="pkipath="):
        connect_uri(host)
    host.uri = "qemu+tls://10.0.0.2/system"
    assert connect_uri(host) == host.uri  # no material assigned: libvirt's defaults (test_certstore adds it)


@pytest.mark.django_db
def test_the_executor_refuses_a_hostile_peer_uri_before_libvirt(monkeypatch, no_libvirt):
    a = Host.objects.create(name="a", uri="test:///default")
    b = Host.objects.create(name="b", uri="test:///default", peer_uri="qemu+ssh://host-b/system?command=/tmp/x")
    migration = make_migration(source=a, destination=b)
    runs = []
    monkeypatch.setattr(gateway, "MigrationRun", lambda *args, **kwargs: runs.append(args))
    executor = Executor(migration)
    with pytest.raises(gateway.GatewayError) as caught:
        executor._migrate(executor.parameters.to_spec(b))
    assert caught.value.message.startswith("The peer URI of b is not allowed")
    assert "command=" in caught.value.message
    assert runs == [] and no_libvirt == []


def test_the_pre_checks_name_a_refused_uri_as_refused_not_as_silent(test_host):
    from migrator.prechecks import run_prechecks

    vm = test_host.vms.get(name="test")
    for peer in ("", "qemu+tcp://h/system"):  # refused as the peer URI, then as the URI the dashboard opens
        hostile = Host.objects.create(
            name=f"hostile{peer[:4]}", uri="qemu+ssh://h/system?command=/tmp/x", peer_uri=peer
        )
        report = run_prechecks(vm, test_host, hostile, {})
        check = report.failures[0]
        assert check.name == ("destination reachable" if peer else "destination peer URI")
        assert "is not allowed" in check.message and "does not answer" not in check.message
