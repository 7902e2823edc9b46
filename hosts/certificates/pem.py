"""Which kind of file was uploaded, and reading exactly one certificate or private key from it.

Admins upload the wrong file often: a DER certificate, a key in the certificate
slot, a CSR, a bundle, an OpenSSH key. Looking at the ``-----BEGIN ...-----``
labels before handing the data to ``cryptography`` lets each of these get a
message that names the file and the command that converts it; exceptions from
``cryptography`` never escape, because their text ("ASN.1 parsing error:
unexpected tag ...") means nothing to the person uploading a file.

The private-key half is here too: it is the same triage by PEM label.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from .errors import CertificateProblem

#: Certificates and keys are a few KB; anything much larger is the wrong file
#: (or an attempt to make us parse something huge).
DEFAULT_MAX_BYTES = 64 * 1024

_PEM_LABEL_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

_CERT_LABELS = {"CERTIFICATE", "X509 CERTIFICATE"}
_PRIVATE_KEY_LABELS = {
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "DSA PRIVATE KEY",
}
_OPENSSH_KEY_LABEL = "OPENSSH PRIVATE KEY"
_CSR_LABELS = {"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"}
_PUBLIC_KEY_LABELS = {"PUBLIC KEY", "RSA PUBLIC KEY"}

_PEM_HINT = "Export the certificate in PEM (Base64) format and upload it again."
_DER_CERT_HINT = (
    "This file is a certificate in binary DER format, but PEM text is needed. "
    "Convert it with: openssl x509 -inform der -in cert.der -out cert.pem "
    "and upload cert.pem."
)


def _pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii") for m in _PEM_LABEL_RE.finditer(data)]


def _strip_bom(data: bytes) -> bytes:
    # Windows editors (Notepad) save UTF-8 with a byte-order mark; harmless.
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _looks_like_der(data: bytes) -> bool:
    # DER structures (certificates, keys, PKCS#12) start with an ASN.1
    # SEQUENCE tag 0x30; text files never do.
    return data[:1] == b"\x30"


def check_not_empty(data: bytes | None, what: str, field_name: str) -> bytes:
    if data is None or not data.strip():
        raise CertificateProblem(
            f"The {what} file is empty. Choose the file again and re-upload it.",
            code="empty",
            field=field_name,
        )
    return data


def check_size(size_bytes: int, what: str, field_name: str, max_bytes: int) -> None:
    if size_bytes > max_bytes:
        raise CertificateProblem(
            f"The {what} file is {human_size(size_bytes)}, which is over the "
            f"{human_size(max_bytes)} limit. Certificates and keys are only a few KB; "
            "check that you picked the right file (a single PEM certificate or key, "
            "not an archive or a whole certificate store).",
            code="too_large",
            field=field_name,
        )


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.0f} KB" if n % 1024 == 0 else f"{n / 1024:.1f} KB"


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------


def load_certificate(data: bytes, *, field_name: str = "cert") -> x509.Certificate:
    """Exactly one PEM certificate; raises CertificateProblem for DER files,
    private keys, CSRs, bundles with several certificates and damaged files."""
    data = _strip_bom(check_not_empty(data, "certificate", field_name))
    labels = _pem_labels(data)

    if not labels:
        if _looks_like_der(data):
            try:
                x509.load_der_x509_certificate(data)
            except ValueError:
                raise CertificateProblem(
                    "This file is binary, not a PEM certificate. If it is a .p12/.pfx "
                    "bundle, extract the certificate with: openssl pkcs12 -in bundle.p12 "
                    "-clcerts -nokeys -out cert.pem (for a CA: -cacerts) and upload "
                    "cert.pem. " + _PEM_HINT,
                    code="binary",
                    field=field_name,
                ) from None
            raise CertificateProblem(_DER_CERT_HINT, code="der", field=field_name)
        raise CertificateProblem(
            "This file is not a PEM certificate: it should start with -----BEGIN CERTIFICATE-----. " + _PEM_HINT,
            code="not_pem",
            field=field_name,
        )

    label_set = set(labels)
    # A private key must never sit in the certificate slot: certificates are
    # treated as public and shown/stored unencrypted.
    if label_set & (_PRIVATE_KEY_LABELS | {_OPENSSH_KEY_LABEL}):
        if label_set & _CERT_LABELS:
            msg = (
                "This file contains a private key as well as a certificate. Upload "
                "only the certificate here (the -----BEGIN CERTIFICATE----- block) and "
                "put the private key in the private key field, so it is stored encrypted."
            )
        else:
            msg = (
                "This file is a private key, not a certificate. Upload it in the "
                "private key field, and upload the certificate (the file that starts "
                "with -----BEGIN CERTIFICATE-----) here."
            )
        raise CertificateProblem(msg, code="private_key_in_cert", field=field_name)

    cert_count = sum(1 for label in labels if label in _CERT_LABELS)
    if cert_count == 0:
        raise CertificateProblem(
            _wrong_pem_kind_message(labels[0], expected="certificate"),
            code="wrong_pem_type",
            field=field_name,
        )
    if cert_count > 1:
        raise CertificateProblem(
            f"This file contains {cert_count} certificates, but exactly one is expected "
            "here. Upload only this host's (or this CA's) own certificate; upload the "
            "CA certificate separately in the CA section.",
            code="multiple_certs",
            field=field_name,
        )

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateProblem(
            "This file looks like a PEM certificate but its contents are damaged and "
            "cannot be read (the Base64 text may have been truncated or edited). "
            "Export the certificate again and upload the new file.",
            code="corrupt",
            field=field_name,
        ) from None
    if len(certs) != 1:  # defensive: label scan and parser disagree
        raise CertificateProblem(
            "Exactly one certificate is expected in this file. " + _PEM_HINT,
            code="multiple_certs",
            field=field_name,
        )
    return certs[0]


def _wrong_pem_kind_message(label: str, *, expected: str) -> str:
    if label in _CSR_LABELS:
        return (
            "This file is a certificate signing request (CSR), not a certificate. "
            "Have it signed by your CA and upload the signed certificate it gives back."
        )
    if label in _PUBLIC_KEY_LABELS:
        what = "a public key"
        fix = (
            "Upload the certificate instead."
            if expected == "certificate"
            else "Upload the private key (-----BEGIN PRIVATE KEY-----) that belongs to the certificate."
        )
        return f"This file is {what}, not a {expected}. {fix}"
    if label == "TRUSTED CERTIFICATE":
        return (
            "This file is in OpenSSL's 'TRUSTED CERTIFICATE' format, which libvirt "
            "cannot use. Convert it with: openssl x509 -in cert.pem -out plain.pem "
            "and upload plain.pem."
        )
    if label == "PKCS7":
        return (
            "This file is a PKCS#7 bundle, not a single certificate. Extract the "
            "certificates with: openssl pkcs7 -print_certs -in bundle.p7b -out certs.pem "
            "and upload only the one that is needed here."
        )
    if label == "X509 CRL":
        return f"This file is a certificate revocation list (CRL), not a {expected}."
    if label in _CERT_LABELS:
        return (
            f"This file is a certificate, not a {expected}. Upload the private key "
            "(the file that starts with -----BEGIN PRIVATE KEY----- or "
            "-----BEGIN RSA/EC PRIVATE KEY-----) here."
        )
    return f"This file contains a '{label}' block, not a {expected}."


# --------------------------------------------------------------------------
# Private keys
# --------------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def load_private_key(data: bytes, passphrase: str | bytes | None = None, *, field_name: str = "key") -> PrivateKey:
    """Load one PEM private key, decrypting it with ``passphrase`` if needed.

    A passphrase given for an unencrypted key is ignored (the form has one
    passphrase field whatever the key looks like).  Only key types usable for
    TLS with GnuTLS are accepted: RSA, EC, Ed25519 and Ed448.
    """
    data = _strip_bom(check_not_empty(data, "private key", field_name))
    labels = _pem_labels(data)

    if not labels:
        if _looks_like_der(data):
            raise CertificateProblem(
                "This private key is in binary (DER) format, but PEM text is needed. "
                "Convert it with: openssl pkey -inform der -in key.der -out key.pem "
                "and upload key.pem.",
                code="der",
                field=field_name,
            )
        raise CertificateProblem(
            "This file is not a PEM private key: it should start with "
            "-----BEGIN PRIVATE KEY----- (or -----BEGIN RSA/EC PRIVATE KEY-----). "
            "Export the key in PEM format and upload it again.",
            code="not_pem",
            field=field_name,
        )

    key_labels = [label for label in labels if label in _PRIVATE_KEY_LABELS]
    if not key_labels:
        if _OPENSSH_KEY_LABEL in labels:
            raise CertificateProblem(
                "This is an OpenSSH key (-----BEGIN OPENSSH PRIVATE KEY-----), which is "
                "used for SSH logins, not for TLS. Upload the private key that was "
                "generated together with this certificate, in PEM format.",
                code="openssh_key",
                field=field_name,
            )
        raise CertificateProblem(
            _wrong_pem_kind_message(labels[0], expected="private key"),
            code="wrong_pem_type",
            field=field_name,
        )
    if len(key_labels) > 1:
        raise CertificateProblem(
            f"This file contains {len(key_labels)} private keys, but exactly one is "
            "expected. Upload only the key that belongs to this certificate.",
            code="multiple_keys",
            field=field_name,
        )

    # Decide from the PEM headers whether a password is needed, instead of
    # parsing cryptography's exception texts, which change between releases.
    encrypted = "ENCRYPTED PRIVATE KEY" in key_labels or b"Proc-Type: 4,ENCRYPTED" in data
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not passphrase:
        passphrase = None

    if encrypted and passphrase is None:
        raise CertificateProblem(
            "This private key is encrypted; enter its passphrase in the passphrase field and upload it again.",
            code="passphrase_required",
            field="passphrase",
        )

    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except TypeError:
        # Headers and contents disagree about encryption: treat it like the
        # common case of a missing passphrase.
        raise CertificateProblem(
            "This private key is encrypted; enter its passphrase in the passphrase field and upload it again.",
            code="passphrase_required",
            field="passphrase",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if encrypted:
            raise CertificateProblem(
                "The passphrase is wrong: this private key could not be decrypted with "
                "it. Check the passphrase (it is case-sensitive) and try again. If you "
                "are sure it is right, re-export the key with: openssl pkey -in key.pem "
                "-out key-plain.pem and upload that instead.",
                code="wrong_passphrase",
                field="passphrase",
            ) from None
        raise CertificateProblem(
            "This private key file is damaged or uses an unsupported format and cannot "
            "be read. Export the key again in PEM format (openssl pkey -in key -out "
            "key.pem) and upload the new file.",
            code="corrupt",
            field=field_name,
        ) from None

    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        kind = "DSA" if isinstance(key, dsa.DSAPrivateKey) else type(key).__name__
        raise CertificateProblem(
            f"This is a {kind} private key, which cannot be used for TLS with libvirt "
            "and QEMU. Generate an RSA (2048 bits or more) or EC (P-256 or larger) key "
            "and certificate instead.",
            code="unsupported_key_type",
            field=field_name,
        )
    return key


def public_key_der(public_key: object) -> bytes:
    """The key's SubjectPublicKeyInfo, to tell whether a key and a certificate belong together."""
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
