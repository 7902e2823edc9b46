"""The certificate store: uploads through the views, encryption at rest,
replacement, removal, TLS readiness, expiry warnings and the pkipath libvirt
reads for qemu+tls:// hosts."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from hosts import inventory
from hosts.certificates import readiness
from hosts.certificates import store as certstore
from hosts.certificates.errors import CertificateProblem
from hosts.certificates.models import Certificate, HostTLS
from hosts.connection import connect_uri
from hosts.models import Host
from migrator.audit.models import AuditEvent
from tests import pki

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def secrets(settings, tmp_path):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    settings.TLS_PKI_DIR = str(tmp_path / "pki")
    return settings


@pytest.fixture(scope="module")
def certs() -> dict[str, pki.Issued]:
    ca = pki.make_ca("Lab CA")
    other_ca = pki.make_ca("Other CA")
    return {
        "ca": ca,
        "other_ca": other_ca,
        "client": pki.make_client(ca),
        "client2": pki.make_client(ca, "dashboard-2027"),
        "client_other_ca": pki.make_client(other_ca),
        "server_a": pki.make_server(ca, "10.0.0.1", "host-a", cn="host-a"),
        "server_b": pki.make_server(ca, "10.0.0.2", "host-b", cn="host-b"),
        "server_b2": pki.make_server(ca, "10.0.0.2", "host-b", cn="host-b renewed"),
        "server_b_other_ca": pki.make_server(other_ca, "10.0.0.2", cn="host-b"),
        "server_b_wrong_sans": pki.make_server(ca, "10.0.0.9", cn="host-b"),
        "expired_client": pki.make_client(ca, not_before=NOW - 400 * DAY, not_after=NOW - 2 * DAY),
        "leaf_marked_ca": pki.make_cert("host-b", issuer=ca, ca=True, ku=pki.LEAF_KU, eku=pki.SERVER_EKU),
        "ca_not_ca": pki.make_cert("Lab CA 2", ca=False, ku=pki.CA_KU),
        "client_server_eku": pki.make_cert("dashboard", issuer=ca, ku=pki.LEAF_KU, eku=pki.SERVER_EKU),
        "server_no_eku": pki.make_cert("host-b", issuer=ca, ku=pki.LEAF_KU, names=["10.0.0.2"]),
        "rsa1024": pki.make_client(ca, key=rsa.generate_private_key(65537, 1024)),
    }


@pytest.fixture
def hosts(db) -> dict[str, Host]:
    return {
        "a": Host.objects.create(name="host-a", uri="test:///default", migration_address="10.0.0.1"),
        "b": Host.objects.create(name="host-b", uri="qemu+tls://10.0.0.2/system", migration_address="10.0.0.2"),
    }


def store(kind: str, issued: pki.Issued, *, key: bool = False, **options) -> Certificate:
    return certstore.store_upload(kind, issued.pem, issued.key_pem() if key else None, **options)


@pytest.fixture
def lab_ca(db, certs) -> Certificate:
    return store("ca", certs["ca"])


def post_upload(client, kind: str, cert_pem: bytes, key_pem: bytes | None = None, **data):
    payload = {"kind": kind, "cert": SimpleUploadedFile("cert.pem", cert_pem)}
    if key_pem is not None:
        payload["key"] = SimpleUploadedFile("key.pem", key_pem)
    payload.update({k: v for k, v in data.items() if v is not None})
    return client.post(reverse("hosts:certificate_upload"), payload)


def counts() -> tuple[int, int, int]:
    return Certificate.objects.count(), HostTLS.objects.count(), AuditEvent.objects.count()


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))


# ------------------------------------------------------------------ good uploads


def test_it_uploads_a_ca(login, users, certs):
    response = post_upload(login("security"), "ca", certs["ca"].pem, name="Lab root")

    cert = Certificate.objects.get()
    assert response.status_code == 302 and response["Location"] == cert.get_absolute_url()
    assert (cert.kind, cert.name, cert.is_ca, cert.active) == ("ca", "Lab root", True, True)
    assert cert.subject == "CN=Lab CA,O=Migration Lab"
    assert cert.encrypted_key is None
    assert cert.uploaded_by == users["security"] and cert.uploaded_by_username == "sam"
    event = AuditEvent.objects.get(action="certificate.uploaded")
    assert event.actor == users["security"] and event.object_id == str(cert.pk)
    assert event.details["fingerprint_sha256"] == cert.fingerprint_sha256


def test_it_uploads_a_client_pair_and_assigns_it(login, certs, hosts, lab_ca):
    response = post_upload(
        login("security"),
        "client",
        certs["client"].pem,
        certs["client"].key_pem(),
        ca=lab_ca.pk,
        assign_hosts=[hosts["b"].pk],
    )

    assert response.status_code == 302
    cert = Certificate.objects.get(kind="client")
    assert cert.ca == lab_ca and cert.extended_key_usage == ["clientAuth"]
    material = HostTLS.objects.get(host=hosts["b"])
    assert (material.ca, material.client) == (lab_ca, cert)
    assert actions()[-2:] == ["certificate.uploaded", "certificate.assigned"]


def test_it_stores_the_private_key_encrypted(certs, lab_ca, settings):
    cert = store("client", certs["client"], key=True, ca=lab_ca)

    stored = bytes(Certificate.objects.get(pk=cert.pk).encrypted_key)
    plain = certs["client"].key_pem()
    assert stored != plain and b"PRIVATE KEY" not in stored
    decrypted = cert.decrypted_key_pem()
    key = serialization.load_pem_private_key(decrypted, password=None)
    assert key.private_numbers() == certs["client"].key.private_numbers()
    # Another encryption key cannot read it.
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CertificateProblem, match="could not be decrypted"):
        cert.decrypted_key_pem()


def test_it_accepts_an_encrypted_key_with_its_passphrase(login, certs, lab_ca):
    encrypted = certs["client"].key_pem(passphrase=b"s3cret pass")

    response = post_upload(
        login("security"), "client", certs["client"].pem, encrypted, ca=lab_ca.pk, passphrase="s3cret pass"
    )

    assert response.status_code == 302
    cert = Certificate.objects.get(kind="client")
    decrypted = cert.decrypted_key_pem()
    assert decrypted.startswith(b"-----BEGIN PRIVATE KEY-----")  # our encryption, not the passphrase's
    assert b"s3cret" not in bytes(cert.encrypted_key)


def test_it_uploads_a_hosts_migration_certificate(login, certs, hosts, lab_ca):
    response = post_upload(login("security"), "server", certs["server_b"].pem, ca=lab_ca.pk, host=hosts["b"].pk)

    assert response.status_code == 302
    cert = Certificate.objects.get(kind="server")
    assert cert.host == hosts["b"] and "IP:10.0.0.2" in cert.sans
    assert cert.served_hosts() == [hosts["b"]]
    assert hosts["b"] in lab_ca.served_hosts()


def test_it_uses_the_key_file_when_no_keys_are_configured(certs, lab_ca, settings, tmp_path):
    settings.SECRETS_KEYS = []
    settings.SECRETS_KEY_FILE = tmp_path / "var" / "secrets.key"

    cert = store("client", certs["client"], key=True, ca=lab_ca)

    assert stat.S_IMODE(os.stat(settings.SECRETS_KEY_FILE).st_mode) == 0o600
    assert cert.decrypted_key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


# ------------------------------------------------------------------ roles


def test_it_refuses_other_roles_on_every_certificate_view(client, login, certs, hosts, lab_ca):
    pk, host = lab_ca.pk, hosts["b"].pk
    pages = [
        ("get", reverse("hosts:certificates")),
        ("get", reverse("hosts:certificate_upload")),
        ("post", reverse("hosts:certificate_upload")),
        ("get", reverse("hosts:certificate_detail", args=[pk])),
        ("post", reverse("hosts:certificate_remove", args=[pk])),
        ("get", reverse("hosts:certificate_assign", args=[host])),
        ("post", reverse("hosts:certificate_assign", args=[host])),
    ]
    for method, url in pages:
        assert getattr(client, method)(url).status_code == 302, url  # anonymous: to the login page
    for role in ("operator", "auditor", "outsider"):
        browser = login(role)
        for method, url in pages:
            assert getattr(browser, method)(url).status_code == 403, (role, url)
    assert Certificate.objects.filter(pk=pk).exists()
    for role in ("security", "admin"):
        browser = login(role)
        for method, url in pages:
            if method == "get":
                assert browser.get(url).status_code == 200, (role, url)


def test_it_shows_the_nav_link_to_security_admins_only(login):
    assert b"Certificates</a>" in login("security").get(reverse("home")).content
    assert b"Certificates</a>" not in login("operator").get(reverse("home")).content


# ------------------------------------------------------------------ bad uploads


def _bad_cases(c: dict[str, pki.Issued], hosts: dict[str, Host], ca: Certificate) -> dict:
    """case -> (kind, cert_pem, key_pem, form data, field, message fragment)."""
    other_key = pki.make_client(c["ca"]).key_pem()
    return {
        "not_pem": ("ca", b"hello, I am not a certificate\n", None, {}, "cert", "not a PEM certificate"),
        "key_instead_of_cert": ("client", c["client"].key_pem(), None, {"ca": ca.pk}, "cert", "private key"),
        "key_mismatch": ("client", c["client"].pem, other_key, {"ca": ca.pk}, "key", "does not match"),
        "encrypted_key_no_passphrase": (
            "client",
            c["client"].pem,
            c["client"].key_pem(passphrase=b"pw"),
            {"ca": ca.pk},
            "passphrase",
            "enter its passphrase",
        ),
        "wrong_passphrase": (
            "client",
            c["client"].pem,
            c["client"].key_pem(passphrase=b"pw"),
            {"ca": ca.pk, "passphrase": "nope"},
            "passphrase",
            "passphrase is wrong",
        ),
        "wrong_ca": (
            "client",
            c["client_other_ca"].pem,
            c["client_other_ca"].key_pem(),
            {"ca": ca.pk},
            "ca",
            "not issued by the selected CA",
        ),
        "expired": ("client", c["expired_client"].pem, c["expired_client"].key_pem(), {"ca": ca.pk}, "cert", "expired"),
        "leaf_marked_ca": (
            "server",
            c["leaf_marked_ca"].pem,
            None,
            {"ca": ca.pk, "host": hosts["b"].pk},
            "cert",
            "marked as a CA",
        ),
        "ca_not_ca": ("ca", c["ca_not_ca"].pem, None, {}, "cert", "not marked as a CA"),
        "client_without_client_auth": (
            "client",
            c["client_server_eku"].pem,
            c["client_server_eku"].key_pem(),
            {"ca": ca.pk},
            "cert",
            "must include clientAuth",
        ),
        "server_without_server_auth": (
            "server",
            c["server_no_eku"].pem,
            None,
            {"ca": ca.pk, "host": hosts["b"].pk},
            "cert",
            "must include serverAuth",
        ),
        "address_not_in_sans": (
            "server",
            c["server_b_wrong_sans"].pem,
            None,
            {"ca": ca.pk, "host": hosts["b"].pk},
            "host",
            "does not cover 10.0.0.2",
        ),
        "rsa_1024": ("client", c["rsa1024"].pem, c["rsa1024"].key_pem(), {"ca": ca.pk}, "cert", "1024-bit RSA key"),
        "oversize": ("ca", c["ca"].pem + b"#" * 70_000, None, {}, "cert", "over the 64 KB limit"),
        "client_without_key": ("client", c["client"].pem, None, {"ca": ca.pk}, "key", "needs its private key"),
        "client_without_ca": ("client", c["client"].pem, c["client"].key_pem(), {}, "ca", "Choose the CA"),
        "server_without_host": ("server", c["server_b"].pem, None, {"ca": ca.pk}, "host", "Choose the host"),
        "server_with_its_key": (
            "server",
            c["server_b"].pem,
            c["server_b"].key_pem(),
            {"ca": ca.pk, "host": hosts["b"].pk},
            "key",
            "stays on the host",
        ),
        "duplicate": ("ca", c["ca"].pem, None, {}, "cert", "already on record"),
        "ca_with_assign": ("ca", c["other_ca"].pem, None, {"assign_hosts": [hosts["b"].pk]}, "assign_hosts", "Only"),
    }


BAD_CASES = [
    "not_pem",
    "key_instead_of_cert",
    "key_mismatch",
    "encrypted_key_no_passphrase",
    "wrong_passphrase",
    "wrong_ca",
    "expired",
    "leaf_marked_ca",
    "ca_not_ca",
    "client_without_client_auth",
    "server_without_server_auth",
    "address_not_in_sans",
    "rsa_1024",
    "oversize",
    "client_without_key",
    "client_without_ca",
    "server_without_host",
    "server_with_its_key",
    "duplicate",
    "ca_with_assign",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_it_rejects_a_bad_upload_with_a_plain_message_and_stores_nothing(case, login, certs, hosts, lab_ca):
    kind, cert_pem, key_pem, data, field, fragment = _bad_cases(certs, hosts, lab_ca)[case]
    browser = login("security")
    before = counts()

    response = post_upload(browser, kind, cert_pem, key_pem, **data)

    assert response.status_code == 200, case
    errors = response.context["form"].errors
    assert field in errors, errors
    assert fragment in " ".join(errors[field]), errors
    assert fragment.encode() in response.content.replace(b"&#x27;", b"'")
    assert counts() == before


def test_it_keeps_the_form_free_of_the_passphrase(login, certs, lab_ca):
    response = post_upload(
        login("security"),
        "client",
        certs["client"].pem,
        certs["client"].key_pem(passphrase=b"topsecret"),
        ca=lab_ca.pk,
        passphrase="wrong-topsecret",
    )
    assert response.status_code == 200
    assert b"wrong-topsecret" not in response.content


def test_it_stores_nothing_when_saving_fails_halfway(monkeypatch, certs, hosts, lab_ca):
    """The row, the assignment and the audit events commit together or not at all."""
    before = counts()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(certstore, "assign_host_tls", broken)
    with pytest.raises(RuntimeError):
        store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])

    assert counts() == before


# ------------------------------------------------------------------ replacement and removal


def test_it_replaces_a_client_certificate(login, certs, hosts, lab_ca):
    old = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])

    response = post_upload(
        login("security"), "client", certs["client2"].pem, certs["client2"].key_pem(), ca=lab_ca.pk, replaces=old.pk
    )

    assert response.status_code == 302
    new = Certificate.objects.get(kind="client", active=True)
    old.refresh_from_db()
    assert new.replaces == old and list(old.replacements.all()) == [new]
    assert old.active is False and old.retired_at is not None
    assert old.encrypted_key is None  # the replaced key is destroyed
    assert HostTLS.objects.get(host=hosts["b"]).client == new
    event = AuditEvent.objects.get(action="certificate.replaced")
    assert event.object_id == str(new.pk)
    assert event.details["replaced"]["fingerprint_sha256"] == old.fingerprint_sha256
    assert event.details["moved_hosts"] == ["host-b"]
    page = login("security").get(reverse("hosts:certificates")).content.decode()
    assert "Replaced (history)" in page and old.get_absolute_url() in page


def test_it_replaces_a_hosts_migration_certificate_by_itself(certs, hosts, lab_ca):
    old = store("server", certs["server_b"], ca=lab_ca, host=hosts["b"])

    new = store("server", certs["server_b2"], ca=lab_ca, host=hosts["b"])

    old.refresh_from_db()
    assert new.replaces == old and not old.active
    assert list(Certificate.objects.active().filter(kind="server", host=hosts["b"])) == [new]
    assert "certificate.replaced" in actions()


def test_it_removes_a_certificate_with_an_audit_event(login, certs, lab_ca):
    cert = store("client", certs["client"], key=True, ca=lab_ca)

    response = login("security").post(reverse("hosts:certificate_remove", args=[cert.pk]))

    assert response.status_code == 302
    assert not Certificate.objects.filter(pk=cert.pk).exists()
    event = AuditEvent.objects.get(action="certificate.removed")
    assert event.object_id == str(cert.pk) and event.details["fingerprint_sha256"] == cert.fingerprint_sha256


def test_it_refuses_to_remove_what_is_in_use(login, certs, hosts, lab_ca):
    cert = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    browser = login("security")

    for target in (cert, lab_ca):
        response = browser.post(reverse("hosts:certificate_remove", args=[target.pk]), follow=True)
        assert Certificate.objects.filter(pk=target.pk).exists()
        assert b"host-b" in response.content or b"issued by this CA" in response.content
    assert "certificate.removed" not in actions()


def test_it_assigns_and_unassigns_a_hosts_tls_material(login, certs, hosts, lab_ca):
    client_cert = store("client", certs["client"], key=True, ca=lab_ca)
    other_ca = store("ca", certs["other_ca"])
    browser = login("security")
    url = reverse("hosts:certificate_assign", args=[hosts["b"].pk])

    mismatch = browser.post(url, {"ca": other_ca.pk, "client": client_cert.pk})
    assert mismatch.status_code == 200 and "not by the CA" in str(mismatch.context["form"].errors)
    assert not HostTLS.objects.exists()

    assert browser.post(url, {"ca": lab_ca.pk, "client": client_cert.pk}).status_code == 302
    assert HostTLS.objects.get(host=hosts["b"]).client == client_cert

    assert browser.post(url, {"ca": "", "client": ""}).status_code == 302
    assert not HostTLS.objects.exists()
    assert actions().count("certificate.assigned") == 2


# ------------------------------------------------------------------ TLS readiness


def test_it_passes_tls_readiness_when_both_hosts_have_good_certificates(certs, hosts, lab_ca):
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])
    store("server", certs["server_b"], ca=lab_ca, host=hosts["b"])

    findings = readiness.tls_readiness(hosts["a"], hosts["b"])

    assert [status for status, _ in findings] == ["pass", "pass", "pass"]
    assert "covers 10.0.0.1" in findings[0][1] and "covers 10.0.0.2" in findings[1][1]
    assert readiness.tls_available(hosts["a"], hosts["b"])


def test_it_fails_tls_readiness_without_a_certificate(certs, hosts, lab_ca):
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])

    findings = readiness.tls_readiness(hosts["a"], hosts["b"])

    fails = [message for status, message in findings if status == "fail"]
    assert len(fails) == 1 and "No migration certificate is on record for host-b" in fails[0]
    assert not readiness.tls_available(hosts["a"], hosts["b"])


def test_it_fails_tls_readiness_for_an_expired_certificate(hosts, lab_ca, certs):
    # Valid when it was uploaded ten days ago, expired two days ago.
    expired = pki.make_server(certs["ca"], "10.0.0.2", cn="host-b", not_before=NOW - 400 * DAY, not_after=NOW - 2 * DAY)
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])
    store("server", expired, ca=lab_ca, host=hosts["b"], now=NOW - 10 * DAY)

    findings = readiness.tls_readiness(hosts["a"], hosts["b"])

    fails = [message for status, message in findings if status == "fail"]
    assert len(fails) == 1
    assert "host-b's migration certificate 'host-b'" in fails[0] and "expired on" in fails[0]


def test_it_fails_tls_readiness_when_the_address_is_not_covered(certs, hosts, lab_ca):
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])
    store("server", certs["server_b"], ca=lab_ca, host=hosts["b"])
    Host.objects.filter(pk=hosts["b"].pk).update(migration_address="10.0.0.77")
    hosts["b"].refresh_from_db()

    findings = readiness.tls_readiness(hosts["a"], hosts["b"])

    fails = [message for status, message in findings if status == "fail"]
    assert len(fails) == 1 and "does not cover 10.0.0.77" in fails[0]


def test_it_fails_tls_readiness_for_certificates_from_different_cas(certs, hosts, lab_ca):
    other_ca = store("ca", certs["other_ca"])
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])
    store("server", certs["server_b_other_ca"], ca=other_ca, host=hosts["b"])

    findings = readiness.tls_readiness(hosts["a"], hosts["b"])

    assert findings[-1][0] == "fail"
    assert "issued by the CA 'Lab CA'" in findings[-1][1] and "'Other CA'" in findings[-1][1]


def test_it_warns_in_tls_readiness_when_a_certificate_expires_soon(certs, hosts, lab_ca):
    soon = pki.make_server(certs["ca"], "10.0.0.2", cn="host-b", not_after=NOW + 20 * DAY)
    store("server", certs["server_a"], ca=lab_ca, host=hosts["a"])
    store("server", soon, ca=lab_ca, host=hosts["b"])

    findings = readiness.tls_readiness(hosts["a"], hosts["b"], now=NOW)

    warns = [message for status, message in findings if status == "warn"]
    assert len(warns) == 1 and "expires in 20 days" in warns[0]
    assert readiness.tls_available(hosts["a"], hosts["b"])


# ------------------------------------------------------------------ expiry warnings


def test_it_warns_of_expiry_at_30_and_7_days(certs, hosts, lab_ca):
    def client_until(cn: str, days: int) -> Certificate:
        issued = pki.make_client(certs["ca"], cn, not_after=NOW + days * DAY + dt.timedelta(hours=1))
        return store("client", issued, key=True, ca=lab_ca, name=cn)

    client_until("in-31-days", 31)
    in_30 = client_until("in-30-days", 30)
    in_7 = client_until("in-7-days", 7)
    certstore.assign_host_tls(hosts["b"], lab_ca, in_7)

    warnings = readiness.expiry_warnings(now=NOW)

    assert [(w.certificate, w.days_left, w.level) for w in warnings] == [(in_7, 7, "danger"), (in_30, 30, "warning")]
    assert "'in-7-days' expires in 7 days" in warnings[0].message and "it serves host-b" in warnings[0].message
    assert "serves no host yet" in warnings[1].message


def test_it_warns_of_expired_certificates_on_the_home_page(login, certs, hosts, lab_ca):
    expired = pki.make_server(certs["ca"], "10.0.0.2", cn="host-b", not_before=NOW - 400 * DAY, not_after=NOW - 3 * DAY)
    store("server", expired, ca=lab_ca, host=hosts["b"], now=NOW - 10 * DAY)

    (warning,) = readiness.expiry_warnings()
    assert warning.days_left < 0 and "expired 3 days ago" in warning.message and "serves host-b" in warning.message

    page = login("operator").get(reverse("home")).content.decode().replace("&#x27;", "'")
    assert "alert-danger" in page and "expired 3 days ago" in page


def test_it_shows_days_left_with_colours_in_the_overview(login, certs, hosts, lab_ca):
    soon = pki.make_client(certs["ca"], "soon", not_after=NOW + 5 * DAY)
    store("client", soon, key=True, ca=lab_ca, assign_hosts=[hosts["b"]])

    page = login("security").get(reverse("hosts:certificates")).content.decode()

    assert 'badge-danger">4 days' in page or 'badge-danger">5 days' in page
    assert 'badge-success">' in page  # the CA: ten years left
    assert lab_ca.fingerprint_sha256[:23] in page


# ------------------------------------------------------------------ pkipath for qemu+tls://


def _pkipath(uri: str) -> Path:
    return Path(parse_qs(urlsplit(uri).query)["pkipath"][0])


def test_it_leaves_the_uri_alone_without_assigned_material(hosts):
    assert connect_uri(hosts["b"]) == hosts["b"].uri


def test_it_writes_a_private_pkipath_for_tls_hosts(certs, hosts, lab_ca, settings):
    client_cert = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])

    uri = connect_uri(hosts["b"])

    assert uri.startswith("qemu+tls://10.0.0.2/system?")
    assert list(parse_qs(urlsplit(uri).query)) == ["pkipath"]  # the host's URI may carry no option of its own
    directory = _pkipath(uri)
    assert directory.parent == Path(settings.TLS_PKI_DIR)
    assert directory.name.startswith(f"{hosts['b'].pk}-")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["cacert.pem", "clientcert.pem", "clientkey.pem"]
    assert stat.S_IMODE((directory / "clientkey.pem").stat().st_mode) == 0o600
    assert (directory / "cacert.pem").read_text() == lab_ca.pem
    assert (directory / "clientcert.pem").read_text() == client_cert.pem
    assert (directory / "clientkey.pem").read_bytes() == client_cert.decrypted_key_pem()


def test_it_reuses_the_pkipath_until_the_material_changes(certs, hosts, lab_ca):
    old = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    first = _pkipath(connect_uri(hosts["b"]))
    inode = (first / "clientkey.pem").stat().st_ino

    assert _pkipath(connect_uri(hosts["b"])) == first
    assert (first / "clientkey.pem").stat().st_ino == inode  # cached, not rewritten

    store("client", certs["client2"], key=True, ca=lab_ca, replaces=old)
    second = _pkipath(connect_uri(hosts["b"]))

    assert second != first and not first.exists()  # the old key is gone from disk
    assert (second / "clientcert.pem").read_bytes() == certs["client2"].pem


def test_it_rewrites_a_damaged_pkipath(certs, hosts, lab_ca):
    store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    directory = _pkipath(connect_uri(hosts["b"]))
    (directory / "clientkey.pem").unlink()
    os.chmod(directory, 0o755)

    assert _pkipath(connect_uri(hosts["b"])) == directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "clientkey.pem").stat().st_mode) == 0o600


def test_it_removes_the_pkipath_when_the_assignment_goes(certs, hosts, lab_ca, django_capture_on_commit_callbacks):
    client_cert = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    directory = _pkipath(connect_uri(hosts["b"]))

    with django_capture_on_commit_callbacks(execute=True):
        certstore.assign_host_tls(hosts["b"], None, None)

    assert not directory.exists()
    assert connect_uri(hosts["b"]) == hosts["b"].uri
    assert Certificate.objects.filter(pk=client_cert.pk).exists()


def test_it_reports_an_undecryptable_key_as_a_connection_error(certs, hosts, lab_ca, settings):
    store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]  # the key was lost

    inventory.refresh_host(hosts["b"])

    hosts["b"].refresh_from_db()
    assert "private key of the client certificate 'dashboard' assigned to host-b" in hosts["b"].inventory_error


def test_it_accepts_ec_and_rsa_2048_clients(certs, lab_ca):
    rsa_client = pki.make_client(certs["ca"], "rsa", key=rsa.generate_private_key(65537, 2048))
    ec_client = pki.make_client(certs["ca"], "p384", key=ec.generate_private_key(ec.SECP384R1()))

    assert store("client", rsa_client, key=True, ca=lab_ca).public_key_bits == 2048
    assert store("client", ec_client, key=True, ca=lab_ca).public_key_type == "EC"
