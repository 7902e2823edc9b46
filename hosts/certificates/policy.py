"""Whether uploaded certificate material will work for libvirt and QEMU, said in plain words.

Security admins upload CA certificates, client certificates (used by the
dashboard to talk to libvirtd) and per-host server certificates (used by
libvirtd and by QEMU for TLS-encrypted migration streams).  Both libvirt and
QEMU use GnuTLS and refuse bad material only at connection time, deep inside a
migration, with an error that is hard to trace back to the upload.  Uploads are
therefore checked up front, and every problem raises :class:`CertificateProblem`
saying what is wrong and how to fix it.

The chain to the chosen CA, the dates and the server's names are judged by
cryptography's verifier (``chain``). This module rules on what the certificate
is, which the verifier does not judge or judges differently from GnuTLS: the key
strength; a CA upload (a trust anchor, which the verifier trusts unchecked); a
leaf's CA flag, Key Usage (the verifier does not ask for digitalSignature) and
Extended Key Usage (it accepts a server certificate without one, and refuses
anyExtendedKeyUsage, which GnuTLS accepts); a SHA-1 or MD5 signature, named as
such; and whether the key matches the certificate.

No Django imports: this can be unit-tested without a database and reused from
management commands and workers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from .chain import check_chain
from .errors import CertificateProblem
from .info import CertificateInfo, aware_now, describe, format_utc
from .pem import DEFAULT_MAX_BYTES, check_not_empty, check_size, load_certificate, load_private_key, public_key_der

#: Upload kinds: the CA that signs everything, the dashboard's client
#: certificate, and a host's server certificate (libvirtd + QEMU migration).
CERT_KINDS: tuple[str, ...] = ("ca", "client", "server")

#: Uploads that expire sooner than this still pass, but with a warning, so the
#: admin is not surprised by failed migrations a few days later.
EXPIRY_WARNING_DAYS = 30

#: Below these sizes keys are considered breakable (NIST SP 800-57, and
#: current GnuTLS defaults reject RSA < 2048 at the "medium" security level).
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

_KIND_LABELS = {
    "ca": "CA certificate",
    "client": "client certificate",
    "server": "server certificate",
}


@dataclass(frozen=True)
class ValidatedUpload:
    """Outcome of a successful :func:`validate_upload`.

    ``key_pem_unencrypted`` is PKCS#8 PEM without a passphrase so the store
    can encrypt it at rest with its own key (see ``secrets.encrypt_secret``);
    callers must never persist it as-is.
    """

    info: CertificateInfo
    key_pem_unencrypted: bytes | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)


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
    now = aware_now(now)
    label = _KIND_LABELS[kind]
    warnings: list[str] = []

    # Size limits first, before handing anything to a parser.
    check_not_empty(cert_pem, label, "cert")
    check_size(len(cert_pem), label, "cert", max_bytes)
    if key_pem:
        check_size(len(key_pem), "private key", "key", max_bytes)
    if ca_pem:
        check_size(len(ca_pem), "CA certificate", "ca", max_bytes)

    cert = load_certificate(cert_pem, field_name="cert")
    info = describe(cert)
    _check_key_strength(info, label)

    if kind == "ca":
        _check_is_ca(info)
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

    ca_info = check_chain(kind, label, cert, info, ca_pem, list(addresses), now)
    if ca_info is not None and ca_info.not_after < info.not_after:
        warnings.append(
            f"The CA certificate expires on {format_utc(ca_info.not_after)}, before "
            f"this {label} ({format_utc(info.not_after)}); it will stop working "
            "when the CA expires."
        )
    elif ca_info is None and kind != "ca":
        warnings.append(
            f"No CA was selected, so it was not checked that this {label} is signed by a CA the hosts trust."
        )

    key_pem_unencrypted = _checked_key(kind, cert, key_pem, passphrase)

    days = info.days_left(now)
    if days < EXPIRY_WARNING_DAYS:
        warnings.append(
            f"This {label} expires in {days} day{'s' if days != 1 else ''} "
            f"(on {format_utc(info.not_after)}). Plan its renewal now."
        )

    return ValidatedUpload(info=info, key_pem_unencrypted=key_pem_unencrypted, warnings=warnings)


def _checked_key(kind: str, cert: x509.Certificate, key_pem: bytes | None, passphrase: str | None) -> bytes | None:
    """The certificate's private key as unencrypted PKCS#8, or None when there is none."""
    if kind == "client" and not key_pem:
        raise CertificateProblem(
            "A client certificate needs its private key: libvirt uses it to prove the "
            "dashboard's identity. Upload the private key that belongs to this "
            "certificate (usually clientkey.pem).",
            code="key_required",
            field="key",
        )
    if not key_pem:
        return None
    key = load_private_key(key_pem, passphrase, field_name="key")
    if public_key_der(key.public_key()) != public_key_der(cert.public_key()):
        raise CertificateProblem(
            "The private key does not match the certificate: they were not "
            "generated as a pair. Upload the key that was used to create this "
            "certificate's signing request.",
            code="key_mismatch",
            field="key",
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_key_strength(info: CertificateInfo, label: str) -> None:
    if info.public_key_type == "RSA" and info.public_key_bits < MIN_RSA_BITS:
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_bits}-bit RSA key, which is too weak "
            f"(at least {MIN_RSA_BITS} bits are required, and GnuTLS rejects shorter "
            "keys). Generate a new key of 3072 bits (or an EC P-256 key) and re-issue "
            "the certificate.",
            code="weak_key",
            field="cert",
        )
    if info.public_key_type == "EC" and info.public_key_bits < MIN_EC_BITS:
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_bits}-bit elliptic-curve key, which is "
            f"too weak (at least {MIN_EC_BITS} bits, e.g. P-256, are required). Generate "
            "a new P-256 or P-384 key and re-issue the certificate.",
            code="weak_key",
            field="cert",
        )
    if info.public_key_type not in ("RSA", "EC", "Ed25519", "Ed448"):
        raise CertificateProblem(
            f"This {label} uses a {info.public_key_type} key, which libvirt and QEMU "
            "cannot use for TLS. Re-issue it with an RSA (2048 bits or more) or EC "
            "(P-256 or larger) key.",
            code="unsupported_key_type",
            field="cert",
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


def _check_is_ca(info: CertificateInfo) -> None:
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
