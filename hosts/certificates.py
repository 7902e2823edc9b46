"""X.509 material for ``qemu+tls://`` libvirt connections and TLS migrations.

Security admins upload CA certificates, client certificates (used by the
dashboard to talk to libvirtd) and per-host server certificates (used by
libvirtd and by QEMU for TLS-encrypted migration streams).  Both libvirt and
QEMU use GnuTLS and refuse bad material only at connection time, deep inside a
migration, with an error that is hard to trace back to the upload.  This
module therefore checks uploads up front and explains every problem in plain
language, saying what is wrong and how to fix it.

Design rules:

* All parsing and cryptography is done by the ``cryptography`` library.  The
  only "parsing" done here is looking at the ``-----BEGIN ...-----`` labels so
  that a wrong kind of file gets a specific message instead of a generic one.
* Every validation failure raises :class:`CertificateProblem` (a
  ``ValueError``) with a message fit to show to the user.  Exceptions from
  ``cryptography`` never escape, because their text ("ASN.1 parsing error:
  unexpected tag ...") means nothing to the person uploading a file.
* This module is pure Python with no Django imports, so it can be unit-tested
  without a database and reused from management commands and workers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_KINDS",
    "DEFAULT_MAX_BYTES",
    "EXPIRY_WARNING_DAYS",
    "MIN_EC_BITS",
    "MIN_RSA_BITS",
    "CertificateInfo",
    "CertificateProblem",
    "ValidatedUpload",
    "decrypt_secret",
    "encrypt_secret",
    "generate_key",
    "load_or_create_key_file",
    "load_private_key",
    "parse_certificate",
    "rotate_secret",
    "validate_upload",
]

logger = logging.getLogger(__name__)

#: Upload kinds: the CA that signs everything, the dashboard's client
#: certificate, and a host's server certificate (libvirtd + QEMU migration).
CERT_KINDS: tuple[str, ...] = ("ca", "client", "server")

#: Certificates and keys are a few KB; anything much larger is the wrong file
#: (or an attempt to make us parse something huge).
DEFAULT_MAX_BYTES = 64 * 1024

#: Uploads that expire sooner than this still pass, but with a warning, so the
#: admin is not surprised by failed migrations a few days later.
EXPIRY_WARNING_DAYS = 30

#: Below these sizes keys are considered breakable (NIST SP 800-57, and
#: current GnuTLS defaults reject RSA < 2048 at the "medium" security level).
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

#: A certificate that becomes valid a few minutes "in the future" is almost
#: always a freshly issued one on a machine whose clock is slightly ahead; do
#: not reject it for that.
CLOCK_SKEW = dt.timedelta(minutes=5)

_KIND_LABELS = {
    "ca": "CA certificate",
    "client": "client certificate",
    "server": "server certificate",
}

# --------------------------------------------------------------------------
# Errors and result types
# --------------------------------------------------------------------------


class CertificateProblem(ValueError):
    """A problem with uploaded material, described for the person uploading it.

    ``message`` says what is wrong and how to fix it; it is safe to show in
    the UI as-is (it never contains key material or a stack trace).
    ``code`` is a short stable identifier (e.g. ``"expired"``) for tests,
    logging and UI logic; ``field`` names the form input the problem belongs
    to (``"cert"``, ``"key"``, ``"passphrase"``, ``"ca"``, ``"addresses"`` or
    ``None`` for problems not tied to an upload field) so a form can attach
    the error to the right input.
    """

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CertificateInfo:
    """Display-ready facts about one certificate (nothing secret in here)."""

    subject: str
    common_name: str
    issuer: str
    serial_hex: str
    sha256_fingerprint: str
    sans: list[str]
    san_ips: list[str]
    san_dns: list[str]
    is_ca: bool
    key_usage: list[str]
    extended_key_usage: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    public_key_type: str
    public_key_bits: int
    pem: str

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until expiry (negative once expired, 0 on the last day)."""
        return (self.not_after - _aware_now(now)).days

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return _aware_now(now) > self.not_after


@dataclass(frozen=True)
class ValidatedUpload:
    """Outcome of a successful :func:`validate_upload`.

    ``key_pem_unencrypted`` is PKCS#8 PEM without a passphrase so the store
    can encrypt it at rest with its own key (see :func:`encrypt_secret`);
    callers must never persist it as-is.
    """

    info: CertificateInfo
    key_pem_unencrypted: bytes | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Recognising what kind of file was uploaded
# --------------------------------------------------------------------------

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


def _check_not_empty(data: bytes | None, what: str, field_name: str) -> bytes:
    if data is None or not data.strip():
        raise CertificateProblem(
            f"The {what} file is empty. Choose the file again and re-upload it.",
            code="empty",
            field=field_name,
        )
    return data


def _check_size(data: bytes, what: str, field_name: str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise CertificateProblem(
            f"The {what} file is {_human_size(len(data))}, which is over the "
            f"{_human_size(max_bytes)} limit. Certificates and keys are only a few KB; "
            "check that you picked the right file (a single PEM certificate or key, "
            "not an archive or a whole certificate store).",
            code="too_large",
            field=field_name,
        )


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.0f} KB" if n % 1024 == 0 else f"{n / 1024:.1f} KB"


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------


def parse_certificate(data: bytes) -> CertificateInfo:
    """Parse exactly one PEM certificate and describe it.

    Raises :class:`CertificateProblem` for DER files, private keys, CSRs,
    bundles with several certificates, and anything that is not a valid
    certificate.
    """
    return _info_from_cert(_load_one_certificate(data, field_name="cert"))


def _load_one_certificate(data: bytes, *, field_name: str) -> x509.Certificate:
    data = _strip_bom(_check_not_empty(data, "certificate", field_name))
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


_KEY_USAGE_NAMES = (
    ("digital_signature", "digitalSignature"),
    ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"),
    ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"),
    ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
)

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
    ExtendedKeyUsageOID.IPSEC_IKE: "ipsecIKE",
    ExtendedKeyUsageOID.SMARTCARD_LOGON: "smartcardLogon",
}


def _key_usage_names(ku: x509.KeyUsage) -> list[str]:
    names = [label for attr, label in _KEY_USAGE_NAMES if getattr(ku, attr)]
    # encipher_only/decipher_only raise unless key_agreement is set.
    if ku.key_agreement:
        if ku.encipher_only:
            names.append("encipherOnly")
        if ku.decipher_only:
            names.append("decipherOnly")
    return names


def _public_key_type_and_bits(public_key: object) -> tuple[str, int]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC", public_key.curve.key_size
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA", public_key.key_size
    return type(public_key).__name__, 0


def _colon_hex(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def _info_from_cert(cert: x509.Certificate) -> CertificateInfo:
    # cryptography parses extensions lazily, so a malformed extension (e.g. a
    # SAN that is not valid DER, or a duplicated extension) only surfaces
    # here; report it as a damaged certificate rather than a crash.
    try:
        return _build_info(cert)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateProblem(
            "This certificate could not be read completely: one of its fields or "
            "extensions is malformed. Re-issue the certificate with a standard tool "
            "(certtool or openssl) and upload the new one.",
            code="malformed",
            field="cert",
        ) from None


def _build_info(cert: x509.Certificate) -> CertificateInfo:
    exts = cert.extensions

    cn_attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(cn_attrs[0].value) if cn_attrs else ""

    sans: list[str] = []
    san_ips: list[str] = []
    san_dns: list[str] = []
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for name in san:
            if isinstance(name, x509.IPAddress):
                value = str(name.value)
                san_ips.append(value)
                sans.append(f"IP:{value}")
            elif isinstance(name, x509.DNSName):
                san_dns.append(name.value)
                sans.append(f"DNS:{name.value}")
            elif isinstance(name, x509.RFC822Name):
                sans.append(f"email:{name.value}")
            elif isinstance(name, x509.UniformResourceIdentifier):
                sans.append(f"URI:{name.value}")
            elif isinstance(name, x509.DirectoryName):
                sans.append(f"DirName:{name.value.rfc4514_string()}")
            else:
                sans.append(f"othername:{getattr(name, 'type_id', '?')}")

    is_ca = False
    try:
        is_ca = bool(exts.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        pass

    key_usage: list[str] = []
    try:
        key_usage = _key_usage_names(exts.get_extension_for_class(x509.KeyUsage).value)
    except x509.ExtensionNotFound:
        pass

    eku: list[str] = []
    try:
        eku_ext = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku_ext]
    except x509.ExtensionNotFound:
        pass

    key_type, key_bits = _public_key_type_and_bits(cert.public_key())
    serial = f"{cert.serial_number:X}"
    if len(serial) % 2:
        serial = "0" + serial

    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        common_name=common_name,
        issuer=cert.issuer.rfc4514_string(),
        serial_hex=serial,
        sha256_fingerprint=_colon_hex(cert.fingerprint(hashes.SHA256())),
        sans=sans,
        san_ips=san_ips,
        san_dns=san_dns,
        is_ca=is_ca,
        key_usage=key_usage,
        extended_key_usage=eku,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_key_type=key_type,
        public_key_bits=key_bits,
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


# --------------------------------------------------------------------------
# Private keys
# --------------------------------------------------------------------------

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def load_private_key(data: bytes, passphrase: str | None = None) -> PrivateKey:
    """Load one PEM private key, decrypting it with ``passphrase`` if needed.

    A passphrase given for an unencrypted key is ignored (the form has one
    passphrase field whatever the key looks like).  Only key types usable for
    TLS with GnuTLS are accepted: RSA, EC, Ed25519 and Ed448.
    """
    return _load_private_key(data, passphrase, field_name="key")


def _load_private_key(data: bytes, passphrase: str | bytes | None, *, field_name: str) -> PrivateKey:
    data = _strip_bom(_check_not_empty(data, "private key", field_name))
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


def _public_key_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------
# Upload validation
# --------------------------------------------------------------------------


def validate_upload(
    kind: str,
    cert_pem: bytes,
    key_pem: bytes | None = None,
    passphrase: str | None = None,
    ca_pem: bytes | None = None,
    addresses: Iterable[str] = (),
    now: dt.datetime | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ValidatedUpload:
    """Check uploaded certificate material before it is stored.

    ``kind`` is ``"ca"``, ``"client"`` (the dashboard's identity towards
    libvirtd) or ``"server"`` (a host's libvirtd/QEMU-migration certificate).
    ``ca_pem`` is the CA the admin chose; client and server certificates must
    be issued directly by it.  ``addresses`` are the host's addresses the
    dashboard will connect to; a server certificate must name each of them in
    its Subject Alternative Names, because GnuTLS checks the connection
    address against the SANs.

    Raises :class:`CertificateProblem` for the first problem found; returns
    non-fatal findings in ``ValidatedUpload.warnings``.
    """
    if kind not in CERT_KINDS:
        # Programming error in the caller, not something the uploader can fix.
        raise ValueError(f"kind must be one of {CERT_KINDS}, not {kind!r}")
    now = _aware_now(now)
    label = _KIND_LABELS[kind]
    warnings: list[str] = []

    # Size limits first, before handing anything to a parser.
    _check_not_empty(cert_pem, label, "cert")
    _check_size(cert_pem, label, "cert", max_bytes)
    if key_pem:
        _check_size(key_pem, "private key", "key", max_bytes)
    if ca_pem:
        _check_size(ca_pem, "CA certificate", "ca", max_bytes)

    cert = _load_one_certificate(cert_pem, field_name="cert")
    info = _info_from_cert(cert)

    _check_validity(info, label, now, field_name="cert")
    _check_key_strength(info, label, field_name="cert")

    if kind == "ca":
        _check_is_ca(cert, info)
        if key_pem:
            raise CertificateProblem(
                "Do not upload the CA's private key. The dashboard only needs the CA "
                "certificate to verify hosts; keep the CA key offline where it cannot "
                "leak. Remove the key and upload the certificate alone.",
                code="ca_key_uploaded",
                field="key",
            )
        if cert.issuer == cert.subject:
            _check_self_signature(cert)
        else:
            _check_signature_hash(cert, label)
            if not ca_pem:
                warnings.append(
                    "This is an intermediate CA (it was issued by "
                    f"'{info.issuer}'). Hosts also need the root CA that issued it."
                )
    else:
        _check_is_leaf(info, kind, label)
        _check_signature_hash(cert, label)
        _check_leaf_key_usage(info, label)
        if kind == "client":
            _check_client_eku(info)
        else:
            _check_server_eku(info)
            _check_addresses(info, addresses)

    if ca_pem:
        ca_cert, ca_info = _load_chosen_ca(ca_pem, now)
        _check_issued_by(cert, info, ca_cert, ca_info, label)
        if ca_info.not_after < info.not_after:
            warnings.append(
                f"The CA certificate expires on {_fmt_date(ca_info.not_after)}, before "
                f"this {label} ({_fmt_date(info.not_after)}); it will stop working "
                "when the CA expires."
            )
    elif kind != "ca":
        warnings.append(
            f"No CA was selected, so it was not checked that this {label} is signed by a CA the hosts trust."
        )

    key_pem_unencrypted: bytes | None = None
    if kind == "client" and not key_pem:
        raise CertificateProblem(
            "A client certificate needs its private key: libvirt uses it to prove the "
            "dashboard's identity. Upload the private key that belongs to this "
            "certificate (usually clientkey.pem).",
            code="key_required",
            field="key",
        )
    if key_pem:
        key = _load_private_key(key_pem, passphrase, field_name="key")
        if _public_key_der(key.public_key()) != _public_key_der(cert.public_key()):
            raise CertificateProblem(
                "The private key does not match the certificate: they were not "
                "generated as a pair. Upload the key that was used to create this "
                "certificate's signing request.",
                code="key_mismatch",
                field="key",
            )
        key_pem_unencrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    days = info.days_left(now)
    if days < EXPIRY_WARNING_DAYS:
        warnings.append(
            f"This {label} expires in {days} day{'s' if days != 1 else ''} "
            f"(on {_fmt_date(info.not_after)}). Plan its renewal now."
        )

    return ValidatedUpload(info=info, key_pem_unencrypted=key_pem_unencrypted, warnings=warnings)


def _aware_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    # Naive datetimes are taken as UTC (Django with USE_TZ stores UTC).
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def _fmt_date(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _check_validity(info: CertificateInfo, label: str, now: dt.datetime, *, field_name: str) -> None:
    if now > info.not_after:
        raise CertificateProblem(
            f"This {label} expired on {_fmt_date(info.not_after)}. Issue a new certificate and upload that instead.",
            code="expired",
            field=field_name,
        )
    if now + CLOCK_SKEW < info.not_before:
        raise CertificateProblem(
            f"This {label} is not valid yet: it only becomes valid on "
            f"{_fmt_date(info.not_before)}. Check the clock of the machine that issued "
            "it, or wait until then to upload it.",
            code="not_yet_valid",
            field=field_name,
        )


def _check_key_strength(info: CertificateInfo, label: str, *, field_name: str) -> None:
    if info.public_key_type == "RSA" and info.public_key_bits < MIN_RSA_BITS:
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_bits}-bit RSA key, which is too weak "
            f"(at least {MIN_RSA_BITS} bits are required, and GnuTLS rejects shorter "
            "keys). Generate a new key of 3072 bits (or an EC P-256 key) and re-issue "
            "the certificate.",
            code="weak_key",
            field=field_name,
        )
    if info.public_key_type == "EC" and info.public_key_bits < MIN_EC_BITS:
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_bits}-bit elliptic-curve key, which is "
            f"too weak (at least {MIN_EC_BITS} bits, e.g. P-256, are required). Generate "
            "a new P-256 or P-384 key and re-issue the certificate.",
            code="weak_key",
            field=field_name,
        )
    if info.public_key_type not in ("RSA", "EC", "Ed25519", "Ed448"):
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_type} key, which libvirt and QEMU "
            "cannot use for TLS. Re-issue it with an RSA (2048 bits or more) or EC "
            "(P-256 or larger) key.",
            code="unsupported_key_type",
            field=field_name,
        )


def _check_signature_hash(cert: x509.Certificate, label: str) -> None:
    # Signatures on self-signed roots are not relied upon, so this is only
    # applied to certificates whose signature a peer actually verifies.
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CertificateProblem(
            f"This {label} is signed with an algorithm that is not supported. Re-issue "
            "it with a SHA-256 (or stronger) signature.",
            code="weak_signature",
            field="cert",
        ) from None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        raise CertificateProblem(
            f"This {label} is signed with {algorithm.name.upper()}, which is broken and "
            "rejected by GnuTLS. Re-issue it with a SHA-256 (or stronger) signature.",
            code="weak_signature",
            field="cert",
        )


def _check_is_ca(cert: x509.Certificate, info: CertificateInfo) -> None:
    if not info.is_ca:
        raise CertificateProblem(
            "This certificate is not marked as a CA (its Basic Constraints extension "
            "does not say CA:TRUE), so libvirt and QEMU will not trust certificates it "
            "signed. Upload the CA certificate itself (often cacert.pem or "
            "ca-cert.pem), not a host or client certificate; or re-create the CA with "
            "basicConstraints=critical,CA:TRUE (the 'ca' option in a certtool template).",
            code="not_ca",
            field="cert",
        )
    if info.key_usage and "keyCertSign" not in info.key_usage:
        raise CertificateProblem(
            "This CA certificate's Key Usage does not include keyCertSign, so it is not "
            "allowed to sign certificates and GnuTLS will reject everything it issued. "
            "Re-create the CA with keyCertSign (the 'cert_signing_key' option in a "
            "certtool template).",
            code="ca_key_usage",
            field="cert",
        )


def _check_is_leaf(info: CertificateInfo, kind: str, label: str) -> None:
    if info.is_ca:
        raise CertificateProblem(
            f"This certificate is marked as a CA (CA:TRUE), but a {label} must not be. "
            "You may have uploaded the CA certificate in the wrong place: upload the "
            f"{kind} certificate here and the CA in the CA section. If it really is the "
            "host's certificate, re-issue it without the CA flag.",
            code="leaf_is_ca",
            field="cert",
        )


def _check_leaf_key_usage(info: CertificateInfo, label: str) -> None:
    # TLS handshakes sign with the leaf key; without digitalSignature GnuTLS
    # refuses the certificate.  An absent extension means "no restriction".
    if info.key_usage and "digitalSignature" not in info.key_usage:
        raise CertificateProblem(
            f"This {label}'s Key Usage does not include digitalSignature, so it cannot "
            "be used in a TLS handshake. Re-issue it with digitalSignature (the "
            "'signing_key' option in a certtool template).",
            code="key_usage",
            field="cert",
        )


def _check_client_eku(info: CertificateInfo) -> None:
    eku = info.extended_key_usage
    if eku and "clientAuth" not in eku and "anyExtendedKeyUsage" not in eku:
        raise CertificateProblem(
            "This certificate is not allowed for TLS client authentication: its "
            f"Extended Key Usage is {', '.join(eku)} but must include clientAuth. "
            "Re-issue it as a client certificate (the 'tls_www_client' option in a "
            "certtool template, or extendedKeyUsage=clientAuth in OpenSSL).",
            code="eku_client",
            field="cert",
        )


def _check_server_eku(info: CertificateInfo) -> None:
    eku = info.extended_key_usage
    if "serverAuth" in eku or "anyExtendedKeyUsage" in eku:
        return
    present = f"its Extended Key Usage is {', '.join(eku)}" if eku else "it has no Extended Key Usage"
    raise CertificateProblem(
        "This certificate is not marked for TLS server use: "
        f"{present} but must include serverAuth. Re-issue it as a server certificate "
        "(the 'tls_www_server' option in a certtool template, or "
        "extendedKeyUsage=serverAuth in OpenSSL).",
        code="eku_server",
        field="cert",
    )


def _normalise_address(
    address: str,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str | None:
    value = address.strip()
    if not value:
        return None
    if value.startswith("[") and value.endswith("]"):  # "[::1]" URL style
        value = value[1:-1]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return value.rstrip(".").lower()


def _dns_matches(pattern: str, hostname: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern == hostname:
        return True
    # RFC 6125 wildcard: "*" as the whole left-most label, matching exactly
    # one label (GnuTLS accepts these too).
    if pattern.startswith("*.") and "." in hostname:
        return hostname.split(".", 1)[1] == pattern[2:] and pattern.count(".") >= 2
    return False


def _check_addresses(info: CertificateInfo, addresses: Iterable[str]) -> None:
    missing: list[str] = []
    san_ips = {ipaddress.ip_address(ip) for ip in info.san_ips}
    for raw in addresses:
        wanted = _normalise_address(raw)
        if wanted is None:
            continue
        if isinstance(wanted, str):
            ok = any(_dns_matches(name, wanted) for name in info.san_dns)
        else:
            ok = wanted in san_ips
        if not ok:
            missing.append(raw.strip())
    if not missing:
        return
    names = ", ".join(info.sans) if info.sans else "no Subject Alternative Names at all"
    raise CertificateProblem(
        f"This certificate does not cover {', '.join(missing)}: it lists {names}. "
        "libvirt and QEMU check that the address they connect to appears in the "
        "certificate's Subject Alternative Names, so the connection would fail. "
        "Re-issue the certificate with every address of this host (certtool: "
        "'ip_address = ...' and 'dns_name = ...' lines; OpenSSL: subjectAltName="
        "IP:...,DNS:...), or correct the host's addresses.",
        code="san_mismatch",
        field="addresses",
    )


def _check_self_signature(cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        raise CertificateProblem(
            "This CA certificate's own signature does not verify, so the file is "
            "damaged or has been tampered with. Export the CA certificate again from "
            "its source and upload the new file.",
            code="bad_signature",
            field="cert",
        ) from None


def _load_chosen_ca(ca_pem: bytes, now: dt.datetime) -> tuple[x509.Certificate, CertificateInfo]:
    try:
        ca_cert = _load_one_certificate(ca_pem, field_name="ca")
        ca_info = _info_from_cert(ca_cert)
        _check_validity(ca_info, "CA certificate", now, field_name="ca")
    except CertificateProblem as exc:
        raise CertificateProblem(
            f"The selected CA certificate cannot be used: {exc.message}",
            code=f"ca_{exc.code}",
            field="ca",
        ) from None
    if not ca_info.is_ca:
        raise CertificateProblem(
            "The selected CA certificate is not marked as a CA (no CA:TRUE in Basic "
            "Constraints), so nothing it signed will be trusted. Select the right CA.",
            code="ca_not_ca",
            field="ca",
        )
    return ca_cert, ca_info


def _check_issued_by(
    cert: x509.Certificate,
    info: CertificateInfo,
    ca_cert: x509.Certificate,
    ca_info: CertificateInfo,
    label: str,
) -> None:
    # Name match alone is not enough (anyone can create a CA with the same
    # name), so the signature is verified with the CA's public key as well.
    if cert.issuer != ca_cert.subject:
        raise CertificateProblem(
            f"This {label} was not issued by the selected CA: it was issued by "
            f"'{info.issuer}', but the selected CA is '{ca_info.subject}'. Select the CA "
            "that signed it, or get a certificate signed by the selected CA.",
            code="wrong_issuer",
            field="ca",
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise CertificateProblem(
            f"This {label} names the selected CA '{ca_info.subject}' as its issuer, but "
            "its signature does not verify with that CA's key. It was signed by a "
            "different CA that has the same name. Get the certificate re-issued by the "
            "selected CA, or select the CA that really signed it.",
            code="bad_signature",
            field="ca",
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateProblem(
            f"This {label}'s signature could not be checked against the selected CA "
            "(the CA's key type or signature algorithm is not supported). Re-issue the "
            "certificate with an RSA or EC CA using SHA-256.",
            code="unverifiable_signature",
            field="ca",
        ) from None


# --------------------------------------------------------------------------
# Encryption at rest for private keys (Fernet: AES-128-CBC + HMAC-SHA256)
# --------------------------------------------------------------------------

KeyOrKeys = bytes | str | Sequence[bytes | str]


def generate_key() -> bytes:
    """A new random Fernet key (url-safe base64, 44 bytes)."""
    return Fernet.generate_key()


def _multi_fernet(key: KeyOrKeys) -> MultiFernet:
    # A list of keys allows rotation: the first key encrypts, all of them are
    # tried for decryption, so old secrets stay readable after a key change.
    keys = [key] if isinstance(key, (bytes, str)) else list(key)
    if not keys:
        raise CertificateProblem(
            "No encryption key is configured for stored private keys. Set the key "
            "(see the dashboard's settings) and try again.",
            code="no_key",
        )
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError):
        raise CertificateProblem(
            "The encryption key for stored private keys is invalid: it must be 32 "
            "random bytes in url-safe Base64 (44 characters), as produced by "
            "generate_key(). Check the key file or setting.",
            code="bad_encryption_key",
        ) from None


def encrypt_secret(plaintext: bytes, key: KeyOrKeys) -> bytes:
    """Encrypt ``plaintext`` with the first of ``key`` (a key or a list of keys)."""
    return _multi_fernet(key).encrypt(plaintext)


def decrypt_secret(token: bytes, key: KeyOrKeys) -> bytes:
    """Decrypt a token from :func:`encrypt_secret`, trying every key given."""
    try:
        return _multi_fernet(key).decrypt(token)
    except (InvalidToken, TypeError):
        raise CertificateProblem(
            "A stored private key could not be decrypted: the encryption key is not "
            "the one it was encrypted with, or the stored data is damaged. Restore the "
            "original key file (or list the old key after the new one while rotating "
            "keys), or upload the private key again.",
            code="decrypt_failed",
        ) from None


def rotate_secret(token: bytes, keys: Sequence[bytes | str]) -> bytes:
    """Re-encrypt ``token`` under ``keys[0]`` (it may be under any of ``keys``)."""
    try:
        return _multi_fernet(keys).rotate(token)
    except (InvalidToken, TypeError):
        raise CertificateProblem(
            "A stored private key could not be re-encrypted because none of the "
            "configured keys can decrypt it. Keep the old key in the list until every "
            "secret has been rotated.",
            code="decrypt_failed",
        ) from None


def load_or_create_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read the Fernet key from ``path``, creating it (mode 0600) if missing.

    Meant for demos and single-host installs; production should provide the
    key from a secret store.  Creation writes to a private temporary file and
    hard-links it into place, so two processes starting at once cannot end up
    with different keys or read a half-written file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # mkstemp creates the file with mode 0600 regardless of umask.
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".fernet-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(generate_key() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_path, 0o600)
            try:
                os.link(tmp_path, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            os.unlink(tmp_path)

    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        # Not fatal (the admin may have reasons), but worth shouting about.
        logger.warning(
            "Key file %s is accessible by other users (mode %o); chmod 600 it.",
            path,
            mode,
        )

    with open(path, "rb") as handle:
        key = handle.read().strip()
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise CertificateProblem(
            f"The key file {path} does not contain a valid encryption key. Restore it "
            "from backup; if no private keys were stored with it yet, delete it and a "
            "new one will be created.",
            code="bad_encryption_key",
        ) from None
    return key
