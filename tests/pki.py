"""A throw-away PKI for tests of the certificate store (EC P-256 unless a test
needs RSA: RSA key generation is slow)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
DAY = dt.timedelta(days=1)
SERVER_EKU = [ExtendedKeyUsageOID.SERVER_AUTH]
CLIENT_EKU = [ExtendedKeyUsageOID.CLIENT_AUTH]
SHA256 = hashes.SHA256()
LEAF_KU = {"digital_signature": True, "key_encipherment": True}
CA_KU = {"key_cert_sign": True, "crl_sign": True}
_KU_NAMES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
_KEY_FORMATS = {
    "pkcs8": serialization.PrivateFormat.PKCS8,
    "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    "openssh": serialization.PrivateFormat.OpenSSH,
}


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def key_usage(**flags: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{n: flags.get(n, False) for n in _KU_NAMES})


def name(cn: str, org: str = "Migration Lab") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self, passphrase: bytes | None = None, fmt: str = "pkcs8") -> bytes:
        encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        return self.key.private_bytes(serialization.Encoding.PEM, _KEY_FORMATS[fmt], encryption)


def sans(*names: str | x509.GeneralName) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, other strings as DNS names."""
    result: list[x509.GeneralName] = []
    for value in names:
        if isinstance(value, x509.GeneralName):
            result.append(value)
            continue
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            result.append(x509.DNSName(value))
    return result


def make_cert(
    cn: str,
    *,
    issuer: Issued | None = None,
    key: object | None = None,
    ca: bool | None = False,
    ku: dict[str, bool] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    names: Iterable[str | x509.GeneralName] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    now: dt.datetime | None = None,
    hash_alg: hashes.HashAlgorithm | None = SHA256,
    subject: x509.Name | None = None,
) -> Issued:
    """A certificate; ``issuer=None`` is self-signed, ``ca=None`` leaves out
    Basic Constraints, ``ku``/``eku``/``names`` only when given."""
    now = now or dt.datetime.now(UTC)
    key = key or ec_key()
    subject = subject or name(cn)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ku is not None:
        builder = builder.add_extension(key_usage(**ku), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans(*names)), critical=False)
    if isinstance(signer_key, ed25519.Ed25519PrivateKey):
        hash_alg = None  # Ed25519 signs without a separate digest
    return Issued(builder.sign(signer_key, hash_alg), key)


def make_ca(cn: str = "Test CA", **kwargs) -> Issued:
    # Valid long before "now" too, so tests can upload leaves as of a past date.
    kwargs.setdefault("not_before", dt.datetime.now(UTC) - 1000 * DAY)
    kwargs.setdefault("not_after", dt.datetime.now(UTC) + 3650 * DAY)
    return make_cert(cn, ca=True, ku=CA_KU, **kwargs)


def make_client(ca: Issued, cn: str = "dashboard", **kwargs) -> Issued:
    return make_cert(cn, issuer=ca, ku=LEAF_KU, eku=CLIENT_EKU, **kwargs)


def make_server(ca: Issued, *names: str, cn: str = "host", **kwargs) -> Issued:
    return make_cert(cn, issuer=ca, ku=LEAF_KU, eku=SERVER_EKU + CLIENT_EKU, names=list(names), **kwargs)
