"""TLS for real, in the two-host lab: the dashboard connects to host B over
qemu+tls:// with the CA and client pair uploaded through the browser, and
encrypted migrations A→B (single channel and parallel connections) succeed,
or fail cleanly with the VM still on A and a record that says why."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from hosts import gateway, inventory
from hosts.certificates import readiness, store
from hosts.certificates.models import Certificate, HostTLS
from hosts.connection import connect_uri
from hosts.models import Host
from migrator.audit.models import AuditEvent
from migrator.models import MigrationState
from tests import pki
from tests.test_migration_lab import form_for, migrate, queue_it, report, work

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def secrets(settings, tmp_path):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    settings.TLS_PKI_DIR = str(tmp_path / "pki")


@pytest.fixture
def tls_b(lab) -> Host:
    """Host B as the dashboard reaches it over qemu+tls:// (from this namespace)."""
    return Host.objects.create(
        name="lab-b-tls",
        uri=lab.tls_uri("B"),
        peer_uri=lab.peer_uri("B"),
        migration_address=lab.migration_address("B"),
        shared_prefixes=str(lab.shared_dir),
    )


def upload(browser, kind: str, cert: Path | bytes, key: Path | None = None, **data):
    cert_pem = cert if isinstance(cert, bytes) else cert.read_bytes()
    payload = {"kind": kind, "cert": SimpleUploadedFile("cert.pem", cert_pem)}
    if key is not None:
        payload["key"] = SimpleUploadedFile(key.name, key.read_bytes())
    payload.update(data)
    return browser.post(reverse("hosts:certificate_upload"), payload)


def upload_lab_ca(lab, browser) -> Certificate:
    response = upload(browser, "ca", lab.pki.ca_cert, name="lab CA")
    assert response.status_code == 302, response.context["form"].errors
    return Certificate.objects.get(kind="ca", name="lab CA")


def counts() -> tuple[int, int, int]:
    return Certificate.objects.count(), HostTLS.objects.count(), AuditEvent.objects.count()


# ------------------------------------------------------------------ qemu+tls:// connections


def test_it_connects_to_b_over_tls_with_the_uploaded_lab_material(lab, login, tls_b):
    browser = login("security")
    ca = upload_lab_ca(lab, browser)

    response = upload(
        browser, "client", lab.pki.client_cert, lab.pki.client_key, ca=ca.pk, assign_hosts=[tls_b.pk], name="dash"
    )

    assert response.status_code == 302, response.context["form"].errors
    assert "pkipath=" in connect_uri(tls_b)
    host = inventory.refresh_host(tls_b)
    assert host.inventory_error == "", host.inventory_error
    assert host.info["hostname"] == "hostB"
    assert host.info["host_uuid"] == "00000000-0000-4000-8000-00000000000b"


def test_it_refuses_the_expired_lab_client_certificate(lab, login, tls_b):
    browser = login("security")
    ca = upload_lab_ca(lab, browser)
    before = counts()

    response = upload(
        browser, "client", lab.pki.expired_client_cert, lab.pki.expired_client_key, ca=ca.pk, assign_hosts=[tls_b.pk]
    )

    assert response.status_code == 200
    assert "This client certificate expired on" in " ".join(response.context["form"].errors["cert"])
    assert counts() == before
    assert connect_uri(tls_b) == tls_b.uri


def test_it_reports_a_client_certificate_that_expired_after_upload(lab, users, tls_b):
    """Uploaded while it was still valid: libvirt now refuses it, and the host says why."""
    ca = store.store_upload("ca", lab.pki.ca_cert.read_bytes())
    expired = x509.load_pem_x509_certificate(lab.pki.expired_client_cert.read_bytes())
    store.store_upload(
        "client",
        lab.pki.expired_client_cert.read_bytes(),
        lab.pki.expired_client_key.read_bytes(),
        ca=ca,
        assign_hosts=[tls_b],
        # The lab made it valid until the moment its CA became valid; the
        # upload check allows the CA 5 minutes of clock skew.
        now=expired.not_valid_after_utc - dt.timedelta(minutes=1),
        user=users["security"],
    )

    host = inventory.refresh_host(tls_b)

    assert host.inventory_refreshed_at is None
    assert "client certificate" in host.inventory_error and "has expired" in host.inventory_error
    assert [w.certificate.kind for w in readiness.expiry_warnings()] == ["client"]


def test_it_refuses_a_client_certificate_from_another_ca(lab, login, tls_b):
    browser = login("security")
    ca = upload_lab_ca(lab, browser)
    before = counts()

    response = upload(browser, "client", lab.pki.foreign_client_cert, lab.pki.foreign_client_key, ca=ca.pk)

    assert response.status_code == 200
    assert "not issued by the selected CA" in " ".join(response.context["form"].errors["ca"])
    assert counts() == before

    # Uploaded with its own CA it is stored, but host B's libvirtd does not trust it.
    assert upload(browser, "ca", lab.pki.foreign_ca_cert, name="foreign CA").status_code == 302
    foreign_ca = Certificate.objects.get(name="foreign CA")
    response = upload(
        browser,
        "client",
        lab.pki.foreign_client_cert,
        lab.pki.foreign_client_key,
        ca=foreign_ca.pk,
        assign_hosts=[tls_b.pk],
    )
    assert response.status_code == 302
    host = inventory.refresh_host(tls_b)
    assert host.inventory_refreshed_at is None
    assert "certificate" in host.inventory_error, host.inventory_error


# ------------------------------------------------------------------ encrypted migrations


@pytest.fixture
def migration_certs(lab, lab_hosts, users) -> dict[str, Certificate]:
    """The lab CA and both hosts' migration certificates on record."""
    a, b = lab_hosts
    ca = store.store_upload("ca", lab.pki.ca_cert.read_bytes(), user=users["security"], name="lab CA")
    return {
        "ca": ca,
        "A": store.store_upload(
            "server", (lab.tls_dir("A") / "server-cert.pem").read_bytes(), ca=ca, host=a, user=users["security"]
        ),
        "B": store.store_upload(
            "server", (lab.tls_dir("B") / "server-cert.pem").read_bytes(), ca=ca, host=b, user=users["security"]
        ),
    }


@contextlib.contextmanager
def deployed(directory: Path, files: dict[str, bytes]) -> Iterator[None]:
    """Temporarily put other TLS files on a lab host (QEMU reads them per migration)."""
    saved = {name: (directory / name).read_bytes() for name in files}
    try:
        for name, data in files.items():
            (directory / name).write_bytes(data)
        yield
    finally:
        for name, data in saved.items():
            (directory / name).write_bytes(data)


def lab_ca(lab) -> pki.Issued:
    root = lab.root / "pki"
    cert = x509.load_pem_x509_certificate((root / "ca-cert.pem").read_bytes())
    key = serialization.load_pem_private_key((root / "ca-key.pem").read_bytes(), password=None)
    return pki.Issued(cert, key)


def assert_failed_cleanly(lab, migration, *fragments: str) -> None:
    text = f"{migration.error_message} {migration.outcome_note}"
    assert migration.state == MigrationState.FAILED, report(migration)
    assert lab.where("web-shared") == "A"
    assert gateway.domain_status(lab.uri("A"), "web-shared").state == gateway.DomainState.RUNNING
    assert migration.vm_location == "lab-a"
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize(
    "mode, overrides",
    [
        ("plain", {}),
        ("tls", {"tls": "on"}),
        ("tls-parallel", {"tls": "on", "parallel_connections": 2}),
    ],
)
def test_it_migrates_a_to_b_encrypted(mode, overrides, lab, lab_hosts, migration_certs, guest, queue, users):  # noqa: F811
    a, b = lab_hosts
    guest("web-shared")

    migration = migrate(queue, a, b, users["operator"], "web-shared", **overrides)

    print(f"{mode}: {report(migration)}")
    assert migration.state == MigrationState.SUCCEEDED, report(migration)
    flags = migration.applied_parameters["flags"]
    assert bool(flags & gateway.MigrateFlag.TLS) == ("tls" in overrides)
    assert bool(flags & gateway.MigrateFlag.PARALLEL) == ("parallel_connections" in overrides)
    if "tls" in overrides:
        tls_checks = [c["status"] for c in migration.precheck_report if c["name"] == "TLS"]
        assert tls_checks == ["pass", "pass", "pass"], migration.precheck_report
    assert lab.where("web-shared") == "B"
    lab.wait_tick("web-shared", "B")


def test_it_fails_cleanly_when_bs_certificate_does_not_name_its_address(
    lab,
    lab_hosts,
    migration_certs,
    guest,
    queue,  # noqa: F811
    users,
):
    """The certificate deployed on B names another address than the one QEMU connects to."""
    a, b = lab_hosts
    guest("web-shared")
    wrong = pki.make_server(lab_ca(lab), "10.77.0.99", "elsewhere", cn="elsewhere")

    with deployed(lab.tls_dir("B"), {"server-cert.pem": wrong.pem, "server-key.pem": wrong.key_pem()}):
        migration = migrate(queue, a, b, users["operator"], "web-shared", tls="on")

    print(report(migration))
    # A's QEMU drops the handshake on the name mismatch. libvirt reports either side of it
    # depending on which error arrives first: A's "does not match the hostname" or B's
    # "Cannot read from TLS channel".
    assert_failed_cleanly(lab, migration, "still running on lab-a")
    text = migration.error_message
    assert "does not match the hostname" in text or "TLS channel" in text, text


def test_it_fails_cleanly_with_an_expired_certificate_on_the_source(
    lab,
    lab_hosts,
    migration_certs,
    guest,
    queue,  # noqa: F811
    users,
):
    """A's QEMU presents an expired client certificate; B (migrate_tls_x509_verify = 1) refuses it."""
    a, b = lab_hosts
    guest("web-shared")
    files = {
        "client-cert.pem": lab.pki.expired_client_cert.read_bytes(),
        "client-key.pem": lab.pki.expired_client_key.read_bytes(),
    }

    with deployed(lab.tls_dir("A"), files):
        migration = migrate(queue, a, b, users["operator"], "web-shared", tls="on")

    print(report(migration))
    assert_failed_cleanly(lab, migration, "still running on lab-a", "client-cert.pem has expired")


def test_it_refuses_tls_when_a_certificate_on_record_is_wrong(lab, lab_hosts, migration_certs, guest, users):
    """The wizard's pre-check says which certificate is wrong, before anything runs."""
    a, b = lab_hosts
    guest("web-shared")
    Host.objects.filter(pk=b.pk).update(migration_address="10.77.0.99")
    b.refresh_from_db()

    form = form_for(a, b, "web-shared", tls="on")

    assert not form.is_valid()
    errors = " ".join(form.non_field_errors())
    assert "lab-b's migration certificate 'hostB'" in errors and "does not cover 10.77.0.99" in errors, errors


def test_it_fails_a_queued_tls_migration_whose_certificate_expired_meanwhile(
    lab,
    lab_hosts,
    migration_certs,
    guest,
    queue,  # noqa: F811
    users,
):
    """Checked again just before migrating: the record says which certificate and why."""
    a, b = lab_hosts
    guest("web-shared")
    migration = queue_it(a, b, users["operator"], "web-shared", tls="on")
    # B's certificate on record is now one that expired yesterday.
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    expired = pki.make_server(
        lab_ca(lab), "10.77.0.2", "hostB", cn="hostB", not_before=yesterday - dt.timedelta(days=30), not_after=yesterday
    )
    Certificate.objects.filter(pk=migration_certs["B"].pk).update(pem=expired.pem.decode(), not_after=yesterday)

    work(queue)

    migration.refresh_from_db()
    print(report(migration))
    assert_failed_cleanly(lab, migration, "Pre-checks failed", "lab-b's migration certificate 'hostB'", "expired on")
