"""What a certificate says, ready to show and to store (nothing secret in here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateProblem
from .pem import load_certificate


def aware_now(now: dt.datetime | None = None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    # Naive datetimes are taken as UTC (Django with USE_TZ stores UTC).
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def format_utc(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


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
        return (self.not_after - aware_now(now)).days

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return aware_now(now) > self.not_after


def parse_certificate(data: bytes) -> CertificateInfo:
    """Parse exactly one PEM certificate and describe it.

    Raises :class:`CertificateProblem` for DER files, private keys, CSRs,
    bundles with several certificates, and anything that is not a valid
    certificate.
    """
    return describe(load_certificate(data, field_name="cert"))


def describe(cert: x509.Certificate) -> CertificateInfo:
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
