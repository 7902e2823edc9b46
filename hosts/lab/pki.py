"""X.509 certificates and keys made on the spot: the lab's CA and host
certificates, and the throw-away PKI of the certificate tests (which import
these names through tests/pki.py). Keys are EC P-256 unless a caller asks for
another: RSA key generation is slow."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .layout import HOSTS, Layout

UTC = dt.UTC
DAY = dt.timedelta(days=1)
SERVER_EKU = [ExtendedKeyUsageOID.SERVER_AUTH]
CLIENT_EKU = [ExtendedKeyUsageOID.CLIENT_AUTH]
SHA256 = hashes.SHA256()
LEAF_KU = {"digital_signature": True, "key_encipherment": True}  # libvirt checks both on server and client certs
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
CERT_VALID_DAYS = 3650  # the lab's certificates


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(key_size: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def key_usage(**flags: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{n: flags.get(n, False) for n in _KU_NAMES})


def name(cn: str, org: str | None = "Migration Lab") -> x509.Name:
    """A subject of an organisation and a common name; `org=None`: the common name alone."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org is not None else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


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


# ------------------------------------------------------------------ the lab's PKI


@dataclass(frozen=True)
class LabPki:
    """Certificates the lab made, for tests that upload or use them."""

    ca_cert: Path
    client_cert: Path
    client_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    foreign_ca_cert: Path  # a CA the hosts do not trust
    foreign_client_cert: Path
    foreign_client_key: Path
    client_pkipath: Path  # cacert.pem, clientcert.pem, clientkey.pem: `?pkipath=` of qemu+tls URIs

    @classmethod
    def under(cls, root: Path) -> LabPki:
        up = root / "pki-upload"
        return cls(
            ca_cert=up / "ca-cert.pem",
            client_cert=up / "client-cert.pem",
            client_key=up / "client-key.pem",
            expired_client_cert=up / "expired-client-cert.pem",
            expired_client_key=up / "expired-client-key.pem",
            foreign_ca_cert=up / "other-ca-cert.pem",
            foreign_client_cert=up / "other-ca-client-cert.pem",
            foreign_client_key=up / "other-ca-client-key.pem",
            client_pkipath=up / "pkipath",
        )


def ensure_lab_pki(layout: Layout) -> set[str]:
    """The lab CA, a certificate per host and the files tests upload. A host
    without its certificate gets one from the CA there is; without the CA or
    the files to upload, all of it is made afresh. Returns the keys of the
    hosts whose certificates were (re)made."""
    ca_dir, pki = layout.root / "pki", LabPki.under(layout.root)
    ca_files = [
        ca_dir / "ca-key.pem",
        ca_dir / "ca-cert.pem",
        pki.foreign_client_key,
        pki.client_pkipath / "clientkey.pem",
    ]
    lacking = {
        k
        for k in HOSTS
        if not all((layout.tls_dir(k) / f).exists() for f in ("ca-cert.pem", "server-cert.pem", "client-key.pem"))
    }
    if all(p.exists() for p in ca_files):
        if not lacking:
            return set()
        ca = Issued(
            x509.load_pem_x509_certificate((ca_dir / "ca-cert.pem").read_bytes()),
            serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), password=None),
        )
        _write(_host_files(layout, ca, lacking))
        return lacking
    for d in (ca_dir, pki.client_pkipath, *(layout.tls_dir(k) for k in HOSTS)):
        d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(**_lab_style("lab CA"))
    files: dict[Path, bytes] = {ca_dir / "ca-cert.pem": ca.pem, ca_dir / "ca-key.pem": ca.key_pem()}
    files |= _host_files(layout, ca, set(HOSTS))
    client = make_client(ca, **_lab_style("lab-dashboard"))
    expired = make_client(ca, **_lab_style("lab-dashboard-expired", key=client.key, valid_days=(-30, -1)))
    other_ca = make_ca(**_lab_style("some other CA"))
    foreign = make_client(other_ca, **_lab_style("lab-dashboard"))
    files |= {
        pki.ca_cert: ca.pem,
        pki.client_cert: client.pem,
        pki.client_key: client.key_pem(),
        pki.expired_client_cert: expired.pem,
        pki.expired_client_key: client.key_pem(),
        pki.foreign_ca_cert: other_ca.pem,
        pki.foreign_client_cert: foreign.pem,
        pki.foreign_client_key: foreign.key_pem(),
        pki.client_pkipath / "cacert.pem": ca.pem,
        pki.client_pkipath / "clientcert.pem": client.pem,
        pki.client_pkipath / "clientkey.pem": client.key_pem(),
    }
    _write(files)
    return set(HOSTS)


def _lab_style(cn: str, key: object | None = None, valid_days: tuple[int, int] = (-1, CERT_VALID_DAYS)) -> dict:
    now = dt.datetime.now(UTC)
    return {
        "cn": cn,
        "key": key or rsa_key(),
        "subject": name(cn, org=None),
        "not_before": now + valid_days[0] * DAY,
        "not_after": now + valid_days[1] * DAY,
    }


def _host_files(layout: Layout, ca: Issued, keys: set[str]) -> dict[Path, bytes]:
    files: dict[Path, bytes] = {}
    for key in keys:
        hd = HOSTS[key]
        # One certificate per host for both roles: QEMU's migration server and
        # client, and libvirtd's TLS listener. The SAN must name the address
        # the peer connects to (the migration address).
        host = make_server(ca, hd.address, hd.hostname, **_lab_style(hd.hostname))
        d = layout.tls_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        files |= {d / "ca-cert.pem": ca.pem, d / "server-cert.pem": host.pem, d / "client-cert.pem": host.pem}
        files |= {d / "server-key.pem": host.key_pem(), d / "client-key.pem": host.key_pem()}
    return files


def _write(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600 if path.name.endswith("key.pem") else 0o644)
