"""The certificate store through the API: security admins only; what is
listed and shown (never a private key, nor its ciphertext); uploads through
the browser's form with its messages, idempotent retries; removal through
the store, which refuses what is in use; the audit events of each."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet
from django.core.files.uploadedfile import SimpleUploadedFile

from hosts.certificates import store as certstore
from hosts.certificates.models import Certificate, HostTLS
from hosts.connection import connect_uri
from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.models import IdempotentRequest
from tests import pki

from .api_helpers import anonymous, token_client

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
LIST = "/api/v1/certificates/"


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
        "other_key": pki.make_client(ca),
        "expiring": pki.make_client(ca, "dashboard-soon", not_after=NOW + 10 * DAY + dt.timedelta(hours=1)),
        "server_b": pki.make_server(ca, "10.0.0.2", "host-b", cn="host-b"),
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


@pytest.fixture
def admin_api(users):
    return token_client(users["security"])


def upload(client, kind: str, cert_pem: bytes | None, key_pem: bytes | None = None, headers=None, **data):
    payload: dict = {"kind": kind}
    if cert_pem is not None:
        payload["cert"] = SimpleUploadedFile("cert.pem", cert_pem)
    if key_pem is not None:
        payload["key"] = SimpleUploadedFile("key.pem", key_pem)
    payload.update({k: v for k, v in data.items() if v is not None})
    return client.post(LIST, payload, format="multipart", headers=headers)


def counts() -> tuple[int, int, int]:
    return Certificate.objects.count(), HostTLS.objects.count(), AuditEvent.objects.count()


def assert_no_secret(response, *certificates: Certificate) -> None:
    text = response.content.decode()
    assert "PRIVATE KEY" not in text
    assert "encrypted_key" not in text
    for cert in certificates:
        if cert.encrypted_key is not None:
            token = bytes(cert.encrypted_key).decode()
            assert token not in text and token[:40] not in text


# ------------------------------------------------------------------ roles


def test_it_refuses_anonymous_and_other_roles_with_the_message(users, lab_ca):
    detail = f"{LIST}{lab_ca.pk}/"
    calls = [("get", LIST), ("get", detail), ("post", LIST), ("delete", detail)]
    for method, url in calls:
        assert getattr(anonymous(), method)(url).status_code == 401, (method, url)
    for role in ("operator", "auditor", "outsider"):
        client = token_client(users[role])
        for method, url in calls:
            response = getattr(client, method)(url)
            assert response.status_code == 403, (role, method, url)
            assert response.json() == {"detail": "Your role does not allow this."}
    assert Certificate.objects.filter(pk=lab_ca.pk).exists()
    for role in ("security", "admin"):
        client = token_client(users[role])
        assert client.get(LIST).status_code == 200
        assert client.get(detail).status_code == 200


# ------------------------------------------------------------------ list and detail


def test_the_list_shows_what_the_page_shows_and_never_a_key(admin_api, certs, hosts, lab_ca):
    client_cert = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    server = store("server", certs["server_b"], ca=lab_ca, host=hosts["b"])

    response = admin_api.get(LIST)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    rows = {row["id"]: row for row in body["results"]}
    row = rows[client_cert.pk]
    assert row["kind"] == "client" and row["kind_label"] == "Client certificate"
    assert row["subject"] == client_cert.subject and row["issuer"] == "CN=Lab CA,O=Migration Lab"
    assert row["fingerprint_sha256"] == client_cert.fingerprint_sha256
    assert row["has_private_key"] is True
    assert row["ca"]["id"] == lab_ca.pk and row["ca"]["url"] == f"{LIST}{lab_ca.pk}/"
    assert row["served_hosts"] == [{"id": hosts["b"].pk, "name": "host-b"}]
    assert row["status"] == "valid" and row["problems"] == [] and row["expired"] is False
    assert row["days_left"] == client_cert.days_left and row["url"] == f"{LIST}{client_cert.pk}/"
    assert row["page"] == client_cert.get_absolute_url()
    assert rows[server.pk]["host"] == {"id": hosts["b"].pk, "name": "host-b"}
    assert "IP:10.0.0.2" in rows[server.pk]["sans"]
    assert rows[lab_ca.pk]["kind"] == "ca" and rows[lab_ca.pk]["has_private_key"] is False
    assert_no_secret(response, client_cert)


def test_the_detail_has_the_extensions_the_pem_and_the_history(admin_api, certs, hosts, lab_ca):
    client_cert = store("client", certs["client"], key=True, ca=lab_ca, user=None)

    response = admin_api.get(f"{LIST}{client_cert.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["extended_key_usage"] == ["clientAuth"] and body["is_ca"] is False
    assert body["public_key_type"] == "EC" and body["public_key_bits"] == 256
    assert body["serial_hex"] == client_cert.serial_hex
    assert body["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert [e["action"] for e in body["events"]] == ["certificate.uploaded"]
    assert_no_secret(response, client_cert)
    ca_body = admin_api.get(f"{LIST}{lab_ca.pk}/").json()
    assert [c["id"] for c in ca_body["issued"]] == [client_cert.pk]


def test_an_expiring_certificate_carries_the_pages_warning(admin_api, certs, lab_ca):
    soon = store("client", certs["expiring"], key=True, ca=lab_ca)

    body = admin_api.get(f"{LIST}{soon.pk}/").json()

    assert body["status"] == "expiring" and body["expiry_level"] == "warning"
    [problem] = body["problems"]
    assert problem["days_left"] == 10 and problem["level"] == "warning"
    assert problem["message"].startswith("Client certificate 'dashboard-soon' expires in 10 days")
    assert any("expires in 10 days" in w for w in body["warnings"])  # noted at upload


def test_the_list_filters_by_kind_and_by_current_or_replaced(admin_api, certs, lab_ca):
    old = store("client", certs["client"], key=True, ca=lab_ca)
    new = store("client", certs["client2"], key=True, ca=lab_ca, replaces=old)

    assert [r["id"] for r in admin_api.get(f"{LIST}?kind=ca").json()["results"]] == [lab_ca.pk]
    assert [r["id"] for r in admin_api.get(f"{LIST}?active=no").json()["results"]] == [old.pk]
    current = admin_api.get(f"{LIST}?kind=client&active=yes").json()["results"]
    assert [(r["id"], r["replaces"]["id"]) for r in current] == [(new.pk, old.pk)]
    old_body = admin_api.get(f"{LIST}{old.pk}/").json()
    assert old_body["status"] == "replaced" and old_body["has_private_key"] is False
    assert [r["id"] for r in old_body["replaced_by"]] == [new.pk]
    response = admin_api.get(f"{LIST}?kind=host")
    assert response.status_code == 400 and "host" in response.json()["errors"]["kind"][0]


def test_an_unknown_certificate_is_a_plain_404(admin_api):
    for url in (f"{LIST}999999/", f"{LIST}abc/"):
        response = admin_api.get(url)
        assert response.status_code == 404 and "detail" in response.json()


# ------------------------------------------------------------------ uploads


def test_it_uploads_a_ca_and_audits_it_as_the_browser_does(admin_api, users, certs):
    response = upload(admin_api, "ca", certs["ca"].pem, name="Lab root")

    assert response.status_code == 201, response.json()
    cert = Certificate.objects.get()
    body = response.json()
    assert response["Location"] == f"{LIST}{cert.pk}/"
    assert (body["id"], body["kind"], body["name"], body["is_ca"]) == (cert.pk, "ca", "Lab root", True)
    assert body["uploaded_by"] == "sam" and cert.uploaded_by == users["security"]
    event = AuditEvent.objects.get(action="certificate.uploaded")
    assert event.actor == users["security"] and event.object_id == str(cert.pk)
    assert event.client_address == "127.0.0.1"
    assert event.details["fingerprint_sha256"] == cert.fingerprint_sha256
    assert event.details["via"] == "API"


def test_it_uploads_a_client_pair_assigns_it_and_shows_no_key(admin_api, certs, hosts, lab_ca):
    response = upload(
        admin_api,
        "client",
        certs["client"].pem,
        certs["client"].key_pem(passphrase=b"s3cret pass"),
        ca=lab_ca.pk,
        passphrase="s3cret pass",
        assign_hosts=[hosts["a"].pk, hosts["b"].pk],
    )

    assert response.status_code == 201, response.json()
    cert = Certificate.objects.get(kind="client")
    assert cert.has_key and cert.ca == lab_ca
    assert sorted(HostTLS.objects.filter(client=cert).values_list("host__name", flat=True)) == ["host-a", "host-b"]
    actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
    assert actions[-3:] == ["certificate.uploaded", "certificate.assigned", "certificate.assigned"]
    body = response.json()
    assert body["has_private_key"] is True
    assert {h["name"] for h in body["served_hosts"]} == {"host-a", "host-b"}
    assert "s3cret" not in response.content.decode()
    assert_no_secret(response, cert)


def test_it_uploads_a_replacement(admin_api, certs, lab_ca):
    old = store("client", certs["client"], key=True, ca=lab_ca)

    response = upload(
        admin_api, "client", certs["client2"].pem, certs["client2"].key_pem(), ca=lab_ca.pk, replaces=old.pk
    )

    assert response.status_code == 201, response.json()
    assert response.json()["replaces"]["id"] == old.pk
    old.refresh_from_db()
    assert not old.active and old.encrypted_key is None
    assert AuditEvent.objects.filter(action="certificate.replaced").count() == 1


def _bad_cases(c: dict[str, pki.Issued], hosts: dict[str, Host], ca: Certificate) -> dict:
    """case -> (kind, cert_pem, key_pem, form data, field, message fragment), as the browser's form says."""
    return {
        "not_pem": ("ca", b"hello, I am not a certificate\n", None, {}, "cert", "not a PEM certificate"),
        "key_instead_of_cert": ("client", c["client"].key_pem(), None, {"ca": ca.pk}, "cert", "private key"),
        "key_mismatch": ("client", c["client"].pem, c["other_key"].key_pem(), {"ca": ca.pk}, "key", "does not match"),
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
        "no_file": ("ca", None, None, {}, "cert", "required"),
        "wrong_kind": ("host", c["ca"].pem, None, {}, "kind", "Select a valid choice"),
        "unknown_ca": ("client", c["client"].pem, c["client"].key_pem(), {"ca": 999999}, "ca", "valid choice"),
    }


BAD_CASES = [
    "not_pem",
    "key_instead_of_cert",
    "key_mismatch",
    "wrong_passphrase",
    "wrong_ca",
    "oversize",
    "client_without_key",
    "client_without_ca",
    "server_without_host",
    "server_with_its_key",
    "duplicate",
    "no_file",
    "wrong_kind",
    "unknown_ca",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_refused_upload_has_the_forms_message_and_stores_nothing(case, admin_api, certs, hosts, lab_ca):
    kind, cert_pem, key_pem, data, field, fragment = _bad_cases(certs, hosts, lab_ca)[case]
    before = counts()

    response = upload(admin_api, kind, cert_pem, key_pem, **data)

    assert response.status_code == 400, (case, response.json())
    body = response.json()
    assert field in body["errors"], body
    assert fragment in " ".join(body["errors"][field]), body
    assert body["detail"].startswith(f"{field}: ") or fragment in body["detail"]
    assert counts() == before
    assert "PRIVATE KEY" not in response.content.decode()


def test_unknown_fields_text_instead_of_files_and_json_are_refused(admin_api, certs):
    response = upload(admin_api, "ca", certs["ca"].pem, colour="blue")
    assert response.status_code == 400
    assert "Unknown field" in response.json()["errors"]["colour"][0]

    response = admin_api.post(LIST, {"kind": "ca", "cert": certs["ca"].pem.decode()}, format="multipart")
    assert response.status_code == 400
    assert "as a file part" in response.json()["errors"]["cert"][0]

    response = admin_api.post(LIST, {"kind": "ca", "cert": certs["ca"].pem.decode()}, format="json")
    assert response.status_code == 415
    assert not Certificate.objects.exists()


def test_a_retried_upload_with_its_idempotency_key_is_stored_once(admin_api, certs):
    key = {"Idempotency-Key": "upload-ca-1"}

    first = upload(admin_api, "ca", certs["ca"].pem, headers=key)
    again = upload(admin_api, "ca", certs["ca"].pem, headers=key)

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Certificate.objects.count() == 1
    assert AuditEvent.objects.filter(action="certificate.uploaded").count() == 1
    stored = IdempotentRequest.objects.get(key="upload-ca-1")
    assert "PRIVATE KEY" not in str(stored.response)

    # Another file under the same key (and the same file name) is another request.
    other = upload(admin_api, "ca", certs["other_ca"].pem, headers=key)
    assert other.status_code == 422
    assert Certificate.objects.count() == 1


def test_a_refused_upload_frees_its_idempotency_key_for_the_corrected_one(admin_api, certs):
    key = {"Idempotency-Key": "upload-ca-2"}

    refused = upload(admin_api, "ca", b"not a certificate", headers=key)
    assert refused.status_code == 400
    assert not IdempotentRequest.objects.filter(key="upload-ca-2").exists()

    corrected = upload(admin_api, "ca", certs["ca"].pem, headers=key)
    assert corrected.status_code == 201 and Certificate.objects.count() == 1


# ------------------------------------------------------------------ removal


def test_it_removes_a_certificate_and_its_key_with_an_audit_event(admin_api, users, certs, lab_ca):
    cert = store("client", certs["client"], key=True, ca=lab_ca)

    response = admin_api.delete(f"{LIST}{cert.pk}/")

    assert response.status_code == 200
    assert response.json()["detail"].startswith("Removed Client certificate dashboard;")
    assert not Certificate.objects.filter(pk=cert.pk).exists()
    assert not Certificate.objects.filter(encrypted_key__isnull=False).exists()
    event = AuditEvent.objects.get(action="certificate.removed")
    assert event.actor == users["security"] and event.client_address == "127.0.0.1"
    assert event.object_id == str(cert.pk) and event.details["fingerprint_sha256"] == cert.fingerprint_sha256
    assert event.details["via"] == "API"
    assert admin_api.delete(f"{LIST}{cert.pk}/").status_code == 404


def test_it_refuses_to_remove_what_is_in_use_and_its_files_go_with_the_assignment(
    admin_api, certs, hosts, lab_ca, settings, django_capture_on_commit_callbacks
):
    cert = store("client", certs["client"], key=True, ca=lab_ca, assign_hosts=[hosts["b"]])
    directory = Path(parse_qs(urlsplit(connect_uri(hosts["b"])).query)["pkipath"][0])
    assert (directory / "clientkey.pem").exists()

    for target in (cert, lab_ca):
        response = admin_api.delete(f"{LIST}{target.pk}/")
        assert response.status_code == 409
        assert "is assigned to host-b for qemu+tls:// connections" in response.json()["detail"]
        assert Certificate.objects.filter(pk=target.pk).exists()
    assert not AuditEvent.objects.filter(action="certificate.removed").exists()

    with django_capture_on_commit_callbacks(execute=True):
        certstore.assign_host_tls(hosts["b"], None, None)
    assert not directory.exists()  # the decrypted key goes with the assignment

    response = admin_api.delete(f"{LIST}{lab_ca.pk}/")
    assert response.status_code == 409 and "issued by this CA (dashboard)" in response.json()["detail"]
    assert admin_api.delete(f"{LIST}{cert.pk}/").status_code == 200
    assert admin_api.delete(f"{LIST}{lab_ca.pk}/").status_code == 200

    assert not list(Path(settings.TLS_PKI_DIR).iterdir())
    assert not Certificate.objects.exists()
    assert AuditEvent.objects.filter(action="certificate.removed").count() == 2
