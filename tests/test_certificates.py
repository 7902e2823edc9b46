"""Tests for the certificate checks (hosts/certificates/: pem, policy, chain) and encryption at rest.

Pure tests (no Django, no database).  A throw-away PKI is generated once per
module with ``cryptography``; EC P-256 keys are used wherever the key type does
not matter because RSA generation is slow.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from hosts.certificates.errors import CertificateProblem
from hosts.certificates.info import CertificateInfo, parse_certificate
from hosts.certificates.pem import DEFAULT_MAX_BYTES, load_private_key
from hosts.certificates.policy import ValidatedUpload, validate_upload
from hosts.certificates.secrets import (
    decrypt_secret,
    encrypt_secret,
    generate_key,
    load_or_create_key_file,
    rotate_secret,
)
from tests import pki as pki_lib
from tests.pki import CA_KU, CLIENT_EKU, DAY, LEAF_KU, SERVER_EKU, UTC, Issued, ec_key, name

# One fixed "now" for both generation and validation keeps expiry maths exact.
NOW = dt.datetime.now(UTC).replace(microsecond=0)

# cryptography >= 45 refuses to *create* SHA-1 signatures, so this legacy
# self-signed client certificate (ecdsa-with-SHA1, valid 2026-11-26 to 2126)
# was made once with: openssl req -x509 -sha1 -newkey ec ... -days 36500
SHA1_CERT_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIIB0zCCAXqgAwIBAgIUddjBQnC24kWQE/RP83Vekq2Np4AwCQYHKoZIzj0EATAu
MRYwFAYDVQQKDA1NaWdyYXRpb24gTGFiMRQwEgYDVQQDDAtsZWdhY3ktc2hhMTAg
Fw0yNjExMjYxMDMxMTNaGA8yMTI2MTEwMjEwMzExM1owLjEWMBQGA1UECgwNTWln
cmF0aW9uIExhYjEUMBIGA1UEAwwLbGVnYWN5LXNoYTEwWTATBgcqhkjOPQIBBggq
hkjOPQMBBwNCAARok8NI//M1yvDyAaKIL35f78ul/k81622Fk9rS4K5o7BkYSI1X
JncoF7vSbL+lkjrI4c8PAo7GmoG1AUqZPDcIo3UwczAdBgNVHQ4EFgQUWSRbhzWt
xqlq8DT7ilqV6uro2vowHwYDVR0jBBgwFoAUWSRbhzWtxqlq8DT7ilqV6uro2vow
DAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUH
AwIwCQYHKoZIzj0EAQNIADBFAiEA0V+VxN8/VFFiLndaDOk/gj0xB6Hy5ShAN9xj
mHifSgsCIBM8ZCe2HJFLf01iJyLVNCp+FF/DQBLC3XnTYOOzGBar
-----END CERTIFICATE-----
"""


def make_cert(cn: str, **kwargs) -> Issued:
    """tests.pki.make_cert at this module's fixed NOW."""
    kwargs.setdefault("now", NOW)
    return pki_lib.make_cert(cn, **kwargs)


@dataclass
class PKI:
    ca: Issued
    server: Issued
    client: Issued
    items: dict[str, Issued] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Issued:
        return self.items[key]


@pytest.fixture(scope="module")
def pki() -> PKI:
    ca = make_cert("Migration Lab CA", ca=True, ku=CA_KU, not_after=NOW + 3650 * DAY)
    server = make_cert(
        "host-b",
        issuer=ca,
        ku=LEAF_KU,
        eku=SERVER_EKU,
        names=["10.77.0.2", "fd00:77::2", "host-b", "host-b.lab.example"],
    )
    client = make_cert("dashboard", issuer=ca, ku=LEAF_KU, eku=CLIENT_EKU)
    other_ca = make_cert("Someone Else CA", ca=True, ku=CA_KU)
    # Same subject as the real CA but a different key: name matching alone
    # would accept its certificates.
    impostor_ca = make_cert("Migration Lab CA", ca=True, ku=CA_KU)
    items = {
        "other_ca": other_ca,
        "impostor_ca": impostor_ca,
        "expired": make_cert(
            "host-b",
            issuer=ca,
            ku=LEAF_KU,
            eku=SERVER_EKU,
            names=["10.77.0.2"],
            not_before=NOW - 400 * DAY,
            not_after=NOW - 2 * DAY,
        ),
        "not_yet_valid": make_cert(
            "host-b",
            issuer=ca,
            ku=LEAF_KU,
            eku=SERVER_EKU,
            names=["10.77.0.2"],
            not_before=NOW + 3 * DAY,
            not_after=NOW + 400 * DAY,
        ),
        "expiring_soon": make_cert(
            "dashboard",
            issuer=ca,
            ku=LEAF_KU,
            eku=CLIENT_EKU,
            not_after=NOW + 10 * DAY + dt.timedelta(hours=1),
        ),
        "from_other_ca": make_cert("dashboard", issuer=other_ca, ku=LEAF_KU, eku=CLIENT_EKU),
        "from_impostor": make_cert("dashboard", issuer=impostor_ca, ku=LEAF_KU, eku=CLIENT_EKU),
        "leaf_marked_ca": make_cert(
            "host-b",
            issuer=ca,
            ca=True,
            ku=LEAF_KU,
            eku=SERVER_EKU,
            names=["10.77.0.2"],
        ),
        "ca_not_ca": make_cert("Migration Lab CA", ca=False, ku=CA_KU),
        "ca_no_basic_constraints": make_cert("Migration Lab CA", ca=None, ku=CA_KU),
        "ca_no_certsign": make_cert("Migration Lab CA", ca=True, ku={"crl_sign": True}),
        "expired_ca": make_cert(
            "Migration Lab CA",
            ca=True,
            ku=CA_KU,
            not_before=NOW - 900 * DAY,
            not_after=NOW - DAY,
        ),
        "intermediate": make_cert("Migration Lab Issuing CA", issuer=ca, ca=True, ku=CA_KU),
        "rsa1024": make_cert(
            "dashboard",
            issuer=ca,
            key=rsa.generate_private_key(65537, 1024),
            ku=LEAF_KU,
            eku=CLIENT_EKU,
        ),
        "rsa2048": make_cert(
            "dashboard",
            issuer=ca,
            key=rsa.generate_private_key(65537, 2048),
            ku=LEAF_KU,
            eku=CLIENT_EKU,
        ),
        "ec224": make_cert(
            "dashboard",
            issuer=ca,
            key=ec_key(ec.SECP224R1()),
            ku=LEAF_KU,
            eku=CLIENT_EKU,
        ),
        "ed25519_server": make_cert(
            "host-c",
            issuer=ca,
            key=ed25519.Ed25519PrivateKey.generate(),
            ku=LEAF_KU,
            eku=SERVER_EKU,
            names=["10.77.0.3"],
        ),
        "dsa": make_cert(
            "dashboard",
            issuer=ca,
            key=dsa.generate_private_key(2048),
            ku=LEAF_KU,
            eku=CLIENT_EKU,
        ),
        "client_server_eku_only": make_cert("dashboard", issuer=ca, ku=LEAF_KU, eku=SERVER_EKU),
        "client_no_eku": make_cert("dashboard", issuer=ca, ku=LEAF_KU),
        "server_client_eku_only": make_cert(
            "host-b",
            issuer=ca,
            ku=LEAF_KU,
            eku=CLIENT_EKU,
            names=["10.77.0.2"],
        ),
        "server_no_eku": make_cert("host-b", issuer=ca, ku=LEAF_KU, names=["10.77.0.2"]),
        "server_no_sans": make_cert("host-b", issuer=ca, ku=LEAF_KU, eku=SERVER_EKU),
        "server_wildcard": make_cert(
            "*.lab.example",
            issuer=ca,
            ku=LEAF_KU,
            eku=SERVER_EKU,
            names=["*.lab.example"],
        ),
        "server_both_eku": make_cert(
            "host-b",
            issuer=ca,
            ku=LEAF_KU,
            eku=SERVER_EKU + CLIENT_EKU,
            names=["10.77.0.2"],
        ),
        "no_digital_signature": make_cert(
            "dashboard",
            issuer=ca,
            ku={"key_encipherment": True},
            eku=CLIENT_EKU,
        ),
        "unrelated_key": Issued(ca.cert, ec_key()),  # only .key_pem() is used
    }
    return PKI(ca=ca, server=server, client=client, items=items)


def problem(callable_, *args, **kwargs) -> CertificateProblem:
    with pytest.raises(CertificateProblem) as excinfo:
        callable_(*args, **kwargs)
    exc = excinfo.value
    # Messages are shown to users: no raw library jargon or tracebacks.
    for jargon in ("ASN.1", "Traceback", "ParseError", "MalformedFraming", "_rust"):
        assert jargon not in exc.message
    return exc


def validate(kind: str, cert_pem: bytes, **kwargs) -> ValidatedUpload:
    kwargs.setdefault("now", NOW)
    return validate_upload(kind, cert_pem, **kwargs)


# --------------------------------------------------------------------------
# Good uploads
# --------------------------------------------------------------------------


def test_it_accepts_a_ca_and_describes_it(pki: PKI) -> None:
    result = validate("ca", pki.ca.pem)
    info = result.info
    assert info.is_ca is True
    assert info.common_name == "Migration Lab CA"
    assert info.subject == "CN=Migration Lab CA,O=Migration Lab"
    assert info.issuer == info.subject
    assert info.key_usage == ["keyCertSign", "cRLSign"]
    assert info.sans == [] and info.extended_key_usage == []
    assert result.key_pem_unencrypted is None
    assert result.warnings == []


def test_it_accepts_a_server_certificate_covering_all_addresses(pki: PKI) -> None:
    result = validate(
        "server",
        pki.server.pem,
        ca_pem=pki.ca.pem,
        addresses=[
            "10.77.0.2",
            "host-b",
            "HOST-B.lab.example.",
            "fd00:77:0:0::2",
            "[fd00:77::2]",
        ],
    )
    info = result.info
    cert = pki.server.cert
    assert info.common_name == "host-b"
    assert info.issuer == "CN=Migration Lab CA,O=Migration Lab"
    assert info.sans == [
        "IP:10.77.0.2",
        "IP:fd00:77::2",
        "DNS:host-b",
        "DNS:host-b.lab.example",
    ]
    assert info.san_ips == ["10.77.0.2", "fd00:77::2"]
    assert info.san_dns == ["host-b", "host-b.lab.example"]
    assert info.is_ca is False
    assert info.key_usage == ["digitalSignature", "keyEncipherment"]
    assert info.extended_key_usage == ["serverAuth"]
    assert info.public_key_type == "EC" and info.public_key_bits == 256
    assert int(info.serial_hex, 16) == cert.serial_number and len(info.serial_hex) % 2 == 0
    assert info.sha256_fingerprint == ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    assert info.not_before == NOW - DAY and info.not_before.tzinfo is not None
    assert info.not_after == NOW + 365 * DAY
    assert info.days_left(NOW) == 365
    assert info.pem == pki.server.pem.decode()
    assert result.warnings == []
    assert result.key_pem_unencrypted is None  # server key is optional


def test_it_accepts_a_client_certificate_and_returns_an_unencrypted_pkcs8_key(
    pki: PKI,
) -> None:
    result = validate("client", pki.client.pem, key_pem=pki.client.key_pem(), ca_pem=pki.ca.pem)
    assert result.info.extended_key_usage == ["clientAuth"]
    assert result.key_pem_unencrypted is not None
    assert result.key_pem_unencrypted.startswith(b"-----BEGIN PRIVATE KEY-----")
    reloaded = serialization.load_pem_private_key(result.key_pem_unencrypted, None)
    assert reloaded.private_numbers() == pki.client.key.private_numbers()


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_it_decrypts_an_encrypted_key_with_the_right_passphrase(pki: PKI, fmt: str) -> None:
    key_pem = pki.client.key_pem(b"s3cret pass", fmt=fmt)
    result = validate(
        "client",
        pki.client.pem,
        key_pem=key_pem,
        passphrase="s3cret pass",
        ca_pem=pki.ca.pem,
    )
    assert b"ENCRYPTED" not in result.key_pem_unencrypted
    assert load_private_key(result.key_pem_unencrypted, None).private_numbers() == (pki.client.key.private_numbers())


def test_it_ignores_a_passphrase_given_for_an_unencrypted_key(pki: PKI) -> None:
    key = load_private_key(pki.client.key_pem(), "not needed")
    assert key.private_numbers() == pki.client.key.private_numbers()


def test_it_accepts_a_server_key_when_given_and_checks_it(pki: PKI) -> None:
    result = validate("server", pki.server.pem, key_pem=pki.server.key_pem(), ca_pem=pki.ca.pem)
    assert result.key_pem_unencrypted is not None
    exc = problem(
        validate,
        "server",
        pki.server.pem,
        key_pem=pki["unrelated_key"].key_pem(),
        ca_pem=pki.ca.pem,
    )
    assert exc.code == "key_mismatch"


def test_it_accepts_rsa_2048_and_ed25519(pki: PKI) -> None:
    rsa_info = validate(
        "client",
        pki["rsa2048"].pem,
        key_pem=pki["rsa2048"].key_pem(),
        ca_pem=pki.ca.pem,
    ).info
    assert (rsa_info.public_key_type, rsa_info.public_key_bits) == ("RSA", 2048)
    ed = pki["ed25519_server"]
    ed_info = validate(
        "server",
        ed.pem,
        key_pem=ed.key_pem(),
        ca_pem=pki.ca.pem,
        addresses=["10.77.0.3"],
    ).info
    assert (ed_info.public_key_type, ed_info.public_key_bits) == ("Ed25519", 256)


def test_it_accepts_a_client_certificate_without_extended_key_usage(pki: PKI) -> None:
    c = pki["client_no_eku"]
    assert validate("client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem).info.extended_key_usage == []


def test_it_accepts_a_certificate_with_both_server_and_client_usage(pki: PKI) -> None:
    c = pki["server_both_eku"]
    validate("server", c.pem, ca_pem=pki.ca.pem, addresses=["10.77.0.2"])
    validate("client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)


def test_it_matches_a_wildcard_dns_san_for_exactly_one_label(pki: PKI) -> None:
    c = pki["server_wildcard"]
    validate("server", c.pem, ca_pem=pki.ca.pem, addresses=["host-b.lab.example"])
    for address in ("a.b.lab.example", "lab.example"):
        assert problem(validate, "server", c.pem, ca_pem=pki.ca.pem, addresses=[address]).code == "san_mismatch"


def test_it_tolerates_bom_crlf_and_text_before_the_pem_block(pki: PKI) -> None:
    messy = b"\xef\xbb\xbfCertificate:\r\n    Data: (openssl x509 -text output)\r\n" + pki.ca.pem.replace(
        b"\n", b"\r\n"
    )
    info = parse_certificate(messy)
    assert info.pem == pki.ca.pem.decode()  # normalised


def test_it_warns_about_a_certificate_that_expires_soon(pki: PKI) -> None:
    c = pki["expiring_soon"]
    result = validate("client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)
    assert result.info.days_left(NOW) == 10
    expected = (
        f"This client certificate expires in 10 days (on {result.info.not_after:%Y-%m-%d %H:%M} UTC). "
        "Plan its renewal now."
    )
    assert result.warnings == [expected]


def test_it_warns_when_no_ca_was_selected_for_a_leaf(pki: PKI) -> None:
    result = validate("client", pki.client.pem, key_pem=pki.client.key_pem())
    assert any("No CA was selected" in w for w in result.warnings)


def test_it_accepts_an_intermediate_ca_with_a_warning_or_its_root(pki: PKI) -> None:
    inter = pki["intermediate"]
    assert any("intermediate CA" in w for w in validate("ca", inter.pem).warnings)
    assert validate("ca", inter.pem, ca_pem=pki.ca.pem).warnings == []


def test_it_allows_small_clock_skew_on_not_before(pki: PKI) -> None:
    fresh = make_cert(
        "dashboard",
        issuer=pki.ca,
        ku=LEAF_KU,
        eku=CLIENT_EKU,
        not_before=NOW + dt.timedelta(minutes=2),
    )
    validate("client", fresh.pem, key_pem=fresh.key_pem(), ca_pem=pki.ca.pem)


def test_it_treats_a_naive_now_as_utc(pki: PKI) -> None:
    validate("ca", pki.ca.pem, now=NOW.replace(tzinfo=None))
    assert pki.ca.cert.not_valid_after_utc > NOW  # sanity


def test_it_returns_frozen_info(pki: PKI) -> None:
    info = parse_certificate(pki.ca.pem)
    assert isinstance(info, CertificateInfo)
    with pytest.raises(AttributeError):
        info.common_name = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------
# Bad uploads: the certificate file itself
# --------------------------------------------------------------------------


def test_it_rejects_a_file_that_is_not_pem_with_the_exact_message() -> None:
    exc = problem(parse_certificate, b"hello, this is my certificate\n")
    assert exc.message == (
        "This file is not a PEM certificate: it should start with -----BEGIN CERTIFICATE-----. "
        "Export the certificate in PEM (Base64) format and upload it again."
    )
    assert exc.code == "not_pem" and exc.field == "cert"
    assert isinstance(exc, ValueError) and str(exc) == exc.message


@pytest.mark.parametrize("data", [b"", b"  \n\n"])
def test_it_rejects_an_empty_file(data: bytes) -> None:
    exc = problem(validate, "ca", data)
    assert exc.code == "empty"
    assert exc.message == "The CA certificate file is empty. Choose the file again and re-upload it."


def test_it_rejects_a_file_over_the_size_limit(pki: PKI) -> None:
    big = pki.ca.pem + b"\n" * DEFAULT_MAX_BYTES
    exc = problem(validate, "ca", big)
    assert exc.code == "too_large"
    assert "which is over the 64 KB limit" in exc.message
    exc = problem(validate, "ca", pki.ca.pem, max_bytes=100)
    assert "over the 100 bytes limit" in exc.message


def test_it_rejects_an_oversized_key_file(pki: PKI) -> None:
    exc = problem(validate, "client", pki.client.pem, key_pem=b"x" * (DEFAULT_MAX_BYTES + 1))
    assert (exc.code, exc.field) == ("too_large", "key")
    assert exc.message.startswith("The private key file is 64.0 KB")


def test_it_rejects_der_with_a_conversion_hint(pki: PKI) -> None:
    exc = problem(parse_certificate, pki.ca.der)
    assert exc.code == "der"
    assert "binary DER format" in exc.message
    assert "openssl x509 -inform der -in cert.der -out cert.pem" in exc.message


def test_it_rejects_other_binary_files_with_a_pkcs12_hint() -> None:
    exc = problem(parse_certificate, b"\x30\x82\x01\x00" + os.urandom(64))
    assert exc.code == "binary"
    assert "openssl pkcs12" in exc.message


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_it_rejects_a_private_key_in_the_certificate_slot(pki: PKI, fmt: str) -> None:
    exc = problem(parse_certificate, pki.client.key_pem(fmt=fmt))
    assert exc.code == "private_key_in_cert"
    assert exc.message.startswith("This file is a private key, not a certificate. Upload it in the private key field")


def test_it_rejects_a_certificate_bundled_with_its_key(pki: PKI) -> None:
    exc = problem(parse_certificate, pki.client.pem + pki.client.key_pem())
    assert exc.code == "private_key_in_cert"
    assert "contains a private key as well as a certificate" in exc.message


def test_it_rejects_several_certificates(pki: PKI) -> None:
    exc = problem(parse_certificate, pki.server.pem + pki.ca.pem)
    assert exc.code == "multiple_certs"
    assert exc.message.startswith("This file contains 2 certificates, but exactly one is expected here.")


def test_it_rejects_a_csr(pki: PKI) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name("host-b"))
        .sign(pki.server.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    exc = problem(parse_certificate, csr)
    assert exc.code == "wrong_pem_type"
    assert "certificate signing request (CSR), not a certificate" in exc.message


def test_it_rejects_a_public_key(pki: PKI) -> None:
    pub = pki.client.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert "This file is a public key, not a certificate" in problem(parse_certificate, pub).message


def test_it_rejects_a_damaged_pem_certificate(pki: PKI) -> None:
    lines = pki.ca.pem.splitlines(keepends=True)
    truncated = b"".join(lines[:3] + lines[-1:])  # BEGIN, two base64 lines, END
    exc = problem(parse_certificate, truncated)
    assert exc.code == "corrupt"
    assert "contents are damaged" in exc.message


def test_it_rejects_an_expired_certificate(pki: PKI) -> None:
    exc = problem(
        validate,
        "server",
        pki["expired"].pem,
        ca_pem=pki.ca.pem,
        addresses=["10.77.0.2"],
    )
    assert exc.code == "expired"
    expected_date = f"{(NOW - 2 * DAY):%Y-%m-%d %H:%M} UTC"
    assert exc.message == (
        f"This server certificate expired on {expected_date}. Issue a new certificate and upload that instead."
    )


def test_it_rejects_a_certificate_that_is_not_yet_valid(pki: PKI) -> None:
    exc = problem(validate, "server", pki["not_yet_valid"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "not_yet_valid"
    assert "is not valid yet" in exc.message and "Check the clock" in exc.message


@pytest.mark.parametrize("case", ["ca_not_ca", "ca_no_basic_constraints"])
def test_it_rejects_a_ca_that_is_not_marked_ca(pki: PKI, case: str) -> None:
    exc = problem(validate, "ca", pki[case].pem)
    assert exc.code == "not_ca"
    assert exc.message.startswith(
        "This certificate is not marked as a CA (its Basic Constraints extension does not say CA:TRUE)"
    )


def test_it_rejects_a_host_certificate_uploaded_as_ca(pki: PKI) -> None:
    assert problem(validate, "ca", pki.server.pem).code == "not_ca"


def test_it_rejects_a_ca_without_keycertsign(pki: PKI) -> None:
    exc = problem(validate, "ca", pki["ca_no_certsign"].pem)
    assert exc.code == "ca_key_usage" and "keyCertSign" in exc.message


def test_it_rejects_a_ca_private_key_upload(pki: PKI) -> None:
    exc = problem(validate, "ca", pki.ca.pem, key_pem=pki.ca.key_pem())
    assert (exc.code, exc.field) == ("ca_key_uploaded", "key")
    assert "Do not upload the CA's private key" in exc.message


def test_it_rejects_a_leaf_marked_ca(pki: PKI) -> None:
    exc = problem(
        validate,
        "server",
        pki["leaf_marked_ca"].pem,
        ca_pem=pki.ca.pem,
        addresses=["10.77.0.2"],
    )
    assert exc.code == "leaf_is_ca"
    assert exc.message.startswith("This certificate is marked as a CA (CA:TRUE), but a server certificate must not be.")


def test_it_rejects_the_ca_uploaded_in_the_client_slot(pki: PKI) -> None:
    exc = problem(validate, "client", pki.ca.pem, key_pem=pki.ca.key_pem(), ca_pem=pki.ca.pem)
    assert exc.code == "leaf_is_ca" and "client certificate must not be" in exc.message


def test_it_rejects_rsa_1024(pki: PKI) -> None:
    c = pki["rsa1024"]
    exc = problem(validate, "client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)
    assert exc.code == "weak_key"
    assert exc.message.startswith("This client certificate uses a 1024-bit RSA key, which is too weak")


def test_it_rejects_ec_below_256_bits(pki: PKI) -> None:
    exc = problem(validate, "client", pki["ec224"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "weak_key" and "224-bit elliptic-curve key" in exc.message


def test_it_rejects_a_dsa_certificate(pki: PKI) -> None:
    exc = problem(validate, "client", pki["dsa"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "unsupported_key_type" and "DSA key" in exc.message


def test_it_rejects_a_sha1_signature() -> None:
    legacy = x509.load_pem_x509_certificate(SHA1_CERT_PEM)
    during_validity = legacy.not_valid_before_utc + DAY
    exc = problem(validate_upload, "client", SHA1_CERT_PEM, now=during_validity)
    assert exc.code == "weak_signature"
    assert exc.message.startswith("This client certificate is signed with SHA1, which is broken")


def test_it_rejects_a_leaf_without_digital_signature_usage(pki: PKI) -> None:
    exc = problem(validate, "client", pki["no_digital_signature"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "key_usage" and "digitalSignature" in exc.message


# --------------------------------------------------------------------------
# Bad uploads: purpose and addresses
# --------------------------------------------------------------------------


def test_it_rejects_a_client_certificate_without_clientauth(pki: PKI) -> None:
    c = pki["client_server_eku_only"]
    exc = problem(validate, "client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)
    assert exc.code == "eku_client"
    assert exc.message.startswith(
        "This certificate is not allowed for TLS client authentication: its Extended Key Usage "
        "is serverAuth but must include clientAuth."
    )


def test_it_rejects_a_server_certificate_without_serverauth(pki: PKI) -> None:
    exc = problem(validate, "server", pki["server_client_eku_only"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "eku_server"
    assert "its Extended Key Usage is clientAuth but must include serverAuth" in exc.message
    exc = problem(validate, "server", pki["server_no_eku"].pem, ca_pem=pki.ca.pem)
    assert exc.code == "eku_server"
    assert "it has no Extended Key Usage but must include serverAuth" in exc.message


def test_it_rejects_a_server_certificate_missing_an_address(pki: PKI) -> None:
    exc = problem(
        validate,
        "server",
        pki.server.pem,
        ca_pem=pki.ca.pem,
        addresses=["10.77.0.2", "10.77.0.9", "host-z"],
    )
    assert (exc.code, exc.field) == ("san_mismatch", "addresses")
    assert exc.message.startswith(
        "This certificate does not cover 10.77.0.9, host-z: it lists IP:10.77.0.2, IP:fd00:77::2, "
        "DNS:host-b, DNS:host-b.lab.example."
    )


def test_it_does_not_accept_an_ip_that_only_appears_as_a_dns_name(pki: PKI) -> None:
    # GnuTLS matches IP connections against IP SANs only.
    c = make_cert(
        "10.77.0.5",
        issuer=pki.ca,
        ku=LEAF_KU,
        eku=SERVER_EKU,
        names=[x509.DNSName("10.77.0.5")],
    )
    assert problem(validate, "server", c.pem, ca_pem=pki.ca.pem, addresses=["10.77.0.5"]).code == "san_mismatch"


def test_it_rejects_a_server_certificate_without_any_san(pki: PKI) -> None:
    exc = problem(
        validate,
        "server",
        pki["server_no_sans"].pem,
        ca_pem=pki.ca.pem,
        addresses=["10.77.0.2"],
    )
    assert exc.code == "san_mismatch"
    assert "it lists no Subject Alternative Names at all" in exc.message


# --------------------------------------------------------------------------
# Bad uploads: chain
# --------------------------------------------------------------------------


def test_it_rejects_a_certificate_from_another_ca(pki: PKI) -> None:
    c = pki["from_other_ca"]
    exc = problem(validate, "client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)
    assert (exc.code, exc.field) == ("wrong_issuer", "ca")
    assert exc.message.startswith(
        "This client certificate was not issued by the selected CA: it was issued by "
        "'CN=Someone Else CA,O=Migration Lab', but the selected CA is 'CN=Migration Lab CA,O=Migration Lab'."
    )


def test_it_rejects_a_certificate_from_a_ca_with_the_same_name_but_another_key(
    pki: PKI,
) -> None:
    c = pki["from_impostor"]
    exc = problem(validate, "client", c.pem, key_pem=c.key_pem(), ca_pem=pki.ca.pem)
    assert exc.code == "bad_signature"
    assert "its signature does not verify with that CA's key" in exc.message


def test_it_rejects_an_expired_selected_ca(pki: PKI) -> None:
    exc = problem(
        validate,
        "client",
        pki.client.pem,
        key_pem=pki.client.key_pem(),
        ca_pem=pki["expired_ca"].pem,
    )
    assert (exc.code, exc.field) == ("ca_expired", "ca")
    assert exc.message.startswith("The selected CA certificate cannot be used: This CA certificate expired on")


def test_it_rejects_a_selected_ca_that_is_not_a_ca(pki: PKI) -> None:
    exc = problem(
        validate,
        "client",
        pki.client.pem,
        key_pem=pki.client.key_pem(),
        ca_pem=pki.server.pem,
    )
    assert exc.code == "ca_not_ca"


def test_it_rejects_a_selected_ca_that_is_not_pem(pki: PKI) -> None:
    exc = problem(
        validate,
        "client",
        pki.client.pem,
        key_pem=pki.client.key_pem(),
        ca_pem=b"garbage",
    )
    assert (exc.code, exc.field) == ("ca_not_pem", "ca")
    assert "The selected CA certificate cannot be used: This file is not a PEM certificate" in exc.message


def test_it_warns_when_the_ca_expires_before_the_leaf(pki: PKI) -> None:
    short_ca = make_cert("Short CA", ca=True, ku=CA_KU, not_after=NOW + 100 * DAY)
    leaf = make_cert("dashboard", issuer=short_ca, ku=LEAF_KU, eku=CLIENT_EKU)
    result = validate("client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=short_ca.pem)
    assert any("The CA certificate expires on" in w for w in result.warnings)


def test_it_allows_small_clock_skew_on_the_selected_ca(pki: PKI) -> None:
    fresh_ca = make_cert("Fresh CA", ca=True, ku=CA_KU, not_before=NOW + dt.timedelta(minutes=2))
    leaf = make_cert("dashboard", issuer=fresh_ca, ku=LEAF_KU, eku=CLIENT_EKU)
    validate("client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=fresh_ca.pem)
    later_ca = make_cert("Later CA", ca=True, ku=CA_KU, not_before=NOW + dt.timedelta(minutes=10))
    leaf = make_cert("dashboard", issuer=later_ca, ku=LEAF_KU, eku=CLIENT_EKU)
    assert problem(validate, "client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=later_ca.pem).code == "ca_not_yet_valid"


def test_it_reports_a_refusal_no_rule_explains_with_the_verifiers_reason(pki: PKI) -> None:
    # SHA-224 is outside the CA/B Forum's signature algorithms.
    leaf = make_cert("dashboard", issuer=pki.ca, ku=LEAF_KU, eku=CLIENT_EKU, hash_alg=hashes.SHA224())
    exc = problem(validate, "client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=pki.ca.pem)
    assert (exc.code, exc.field) == ("verification_failed", "cert")
    assert exc.message.startswith(
        "This client certificate does not verify against the selected CA 'CN=Migration Lab CA,O=Migration Lab' ("
    )
    assert "AlgorithmIdentifier" not in exc.message and "encountered processing" not in exc.message


def test_it_checks_a_chain_from_an_eddsa_ca_by_hand() -> None:
    # The verifier refuses Ed25519 issuers; GnuTLS does not.
    ed_ca = make_cert("Ed CA", ca=True, ku=CA_KU, key=ed25519.Ed25519PrivateKey.generate())
    leaf = make_cert("dashboard", issuer=ed_ca, ku=LEAF_KU, eku=CLIENT_EKU)
    validate("client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=ed_ca.pem)
    impostor = make_cert("Ed CA", ca=True, ku=CA_KU, key=ed25519.Ed25519PrivateKey.generate())
    assert problem(validate, "client", leaf.pem, key_pem=leaf.key_pem(), ca_pem=impostor.pem).code == "bad_signature"


# --------------------------------------------------------------------------
# Bad uploads: private keys
# --------------------------------------------------------------------------


def test_it_requires_a_key_for_a_client_certificate(pki: PKI) -> None:
    exc = problem(validate, "client", pki.client.pem, ca_pem=pki.ca.pem)
    assert (exc.code, exc.field) == ("key_required", "key")
    assert exc.message.startswith("A client certificate needs its private key")


def test_it_rejects_a_key_that_does_not_match(pki: PKI) -> None:
    exc = problem(
        validate,
        "client",
        pki.client.pem,
        key_pem=pki["unrelated_key"].key_pem(),
        ca_pem=pki.ca.pem,
    )
    assert (exc.code, exc.field) == ("key_mismatch", "key")
    assert exc.message.startswith("The private key does not match the certificate")


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
@pytest.mark.parametrize("passphrase", [None, ""])
def test_it_asks_for_the_passphrase_of_an_encrypted_key(pki: PKI, fmt: str, passphrase: str | None) -> None:
    key_pem = pki.client.key_pem(b"s3cret", fmt=fmt)
    exc = problem(
        validate,
        "client",
        pki.client.pem,
        key_pem=key_pem,
        passphrase=passphrase,
        ca_pem=pki.ca.pem,
    )
    assert (exc.code, exc.field) == ("passphrase_required", "passphrase")
    assert exc.message == (
        "This private key is encrypted; enter its passphrase in the passphrase field and upload it again."
    )


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_it_reports_a_wrong_passphrase(pki: PKI, fmt: str) -> None:
    exc = problem(load_private_key, pki.client.key_pem(b"s3cret", fmt=fmt), "S3cret")
    assert (exc.code, exc.field) == ("wrong_passphrase", "passphrase")
    assert exc.message.startswith("The passphrase is wrong: this private key could not be decrypted with it.")


def test_it_rejects_a_certificate_in_the_key_slot(pki: PKI) -> None:
    exc = problem(validate, "client", pki.client.pem, key_pem=pki.client.pem, ca_pem=pki.ca.pem)
    assert exc.code == "wrong_pem_type"
    assert exc.message.startswith("This file is a certificate, not a private key.")


def test_it_rejects_a_der_key_with_a_hint(pki: PKI) -> None:
    der = pki.client.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    exc = problem(load_private_key, der, None)
    assert exc.code == "der" and "openssl pkey -inform der" in exc.message


def test_it_rejects_an_openssh_key(pki: PKI) -> None:
    ssh = Issued(pki.ca.cert, ed25519.Ed25519PrivateKey.generate()).key_pem(fmt="openssh")
    exc = problem(load_private_key, ssh, None)
    assert exc.code == "openssh_key" and "used for SSH logins, not for TLS" in exc.message


def test_it_rejects_text_and_damaged_keys(pki: PKI) -> None:
    assert problem(load_private_key, b"my key", None).code == "not_pem"
    lines = pki.client.key_pem().splitlines(keepends=True)
    damaged = lines[0] + b"AAAA" + lines[1][4:] + b"".join(lines[2:])
    assert problem(load_private_key, damaged, None).code == "corrupt"
    assert problem(load_private_key, b"", None).code == "empty"


def test_it_rejects_two_keys_in_one_file(pki: PKI) -> None:
    exc = problem(load_private_key, pki.client.key_pem() + pki.server.key_pem(), None)
    assert exc.code == "multiple_keys"


def test_it_rejects_a_dsa_private_key() -> None:
    key_pem = dsa.generate_private_key(2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert problem(load_private_key, key_pem, None).code == "unsupported_key_type"


def test_it_rejects_an_unknown_kind_as_a_programming_error(pki: PKI) -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_upload("host", pki.ca.pem)
    assert not isinstance(excinfo.value, CertificateProblem)


@pytest.mark.parametrize(
    "data",
    [
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n",
        b"-----BEGIN TRUSTED CERTIFICATE-----\nMIIB\n-----END TRUSTED CERTIFICATE-----\n",
        b"-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n",
        b"-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n",
        b"\x00\x01\x02\xff" * 50,
        b"\x30" + os.urandom(200),
        "Zertifikat: äöü".encode(),
    ],
)
def test_it_never_leaks_library_exceptions_for_garbage(pki: PKI, data: bytes) -> None:
    for kind, kwargs in (
        ("ca", {}),
        ("client", {"key_pem": pki.client.key_pem()}),
    ):
        problem(validate, kind, data, **kwargs)
    problem(validate, "client", pki.client.pem, key_pem=data, ca_pem=pki.ca.pem)
    problem(validate, "client", pki.client.pem, key_pem=pki.client.key_pem(), ca_pem=data)


# --------------------------------------------------------------------------
# Encryption at rest
# --------------------------------------------------------------------------


def test_it_round_trips_a_secret(pki: PKI) -> None:
    key = generate_key()
    secret = pki.client.key_pem()
    token = encrypt_secret(secret, key)
    assert secret not in token
    assert decrypt_secret(token, key) == secret
    assert decrypt_secret(token, key.decode()) == secret  # str keys from settings


def test_it_fails_clearly_with_the_wrong_key() -> None:
    token = encrypt_secret(b"private", generate_key())
    exc = problem(decrypt_secret, token, generate_key())
    assert exc.code == "decrypt_failed"
    assert exc.message.startswith("A stored private key could not be decrypted")


def test_it_fails_clearly_with_a_tampered_token() -> None:
    key = generate_key()
    token = bytearray(encrypt_secret(b"private", key))
    token[-5] = ord("A") if token[-5] != ord("A") else ord("B")
    assert problem(decrypt_secret, bytes(token), key).code == "decrypt_failed"
    assert problem(decrypt_secret, b"not a token", key).code == "decrypt_failed"


@pytest.mark.parametrize("bad_key", [b"short", b"", "x" * 44, []])
def test_it_rejects_an_invalid_encryption_key(bad_key) -> None:
    exc = problem(encrypt_secret, b"private", bad_key)
    assert exc.code in {"bad_encryption_key", "no_key"}


def test_it_supports_key_rotation() -> None:
    old, new = generate_key(), generate_key()
    old_token = encrypt_secret(b"private", old)
    # During rotation the new key comes first and the old one still decrypts.
    assert decrypt_secret(old_token, [new, old]) == b"private"
    new_token = encrypt_secret(b"private", [new, old])
    assert Fernet(new).decrypt(new_token) == b"private"
    rotated = rotate_secret(old_token, [new, old])
    assert decrypt_secret(rotated, new) == b"private"
    assert problem(decrypt_secret, rotated, old).code == "decrypt_failed"
    assert problem(rotate_secret, old_token, [generate_key()]).code == "decrypt_failed"


def test_it_creates_a_private_key_file_and_reuses_it(tmp_path) -> None:
    path = tmp_path / "secrets" / "fernet.key"
    key = load_or_create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Fernet(key)  # valid
    assert load_or_create_key_file(str(path)) == key
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind
    assert decrypt_secret(encrypt_secret(b"x", key), load_or_create_key_file(path)) == b"x"


def test_it_rejects_a_corrupt_key_file(tmp_path) -> None:
    path = tmp_path / "fernet.key"
    path.write_bytes(b"not a key\n")
    exc = problem(load_or_create_key_file, path)
    assert exc.code == "bad_encryption_key" and str(path) in exc.message


def test_it_accepts_a_combined_certificate_and_key_file_in_the_key_slot(
    pki: PKI,
) -> None:
    # Some tools write cert and key into one file; the key slot only needs the key.
    combined = pki.client.pem + pki.client.key_pem()
    result = validate("client", pki.client.pem, key_pem=combined, ca_pem=pki.ca.pem)
    assert result.key_pem_unencrypted is not None
