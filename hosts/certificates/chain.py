"""Whether a certificate chains to the chosen CA, is valid now and names the host's addresses.

cryptography's X.509 verifier (``PolicyBuilder``, ``Store``) gives the verdict.
When it refuses, the plain-words rules below find which one the certificate
breaks and say how to fix it; a refusal none of them explains is reported with
the verifier's own reason. With no CA chosen there is no chain to build, and the
same rules judge the dates and the names by themselves.

The verifier's CA/B Forum defaults are stricter than GnuTLS, which libvirt and
QEMU use, in ways that would refuse working certificates, so they are relaxed:
no Authority Key Identifier is required, a CA's Basic Constraints need not be
critical and its Key Usage may be missing. The leaf's own extensions (CA flag,
Key Usage, Extended Key Usage) are ruled on in ``policy``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from .errors import CertificateProblem
from .info import CertificateInfo, describe, format_utc
from .pem import load_certificate

#: A certificate that becomes valid a few minutes "in the future" is almost
#: always a freshly issued one on a machine whose clock is slightly ahead; do
#: not reject it for that.
CLOCK_SKEW = dt.timedelta(minutes=5)

_CA_EXTENSIONS = (
    ExtensionPolicy.webpki_defaults_ca()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, None)
)
_LEAF_EXTENSIONS = ExtensionPolicy.permit_all()
_NAMED_LEAF_EXTENSIONS = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)
# The verifier takes only the CA/B Forum's key algorithms for an issuer (RSA,
# P-256, P-384, P-521); GnuTLS also checks EdDSA signatures.
_KEY_TYPES_THE_VERIFIER_REFUSES = ("Ed25519", "Ed448")


def check_chain(
    kind: str,
    label: str,
    cert: x509.Certificate,
    info: CertificateInfo,
    ca_pem: bytes | None,
    addresses: Sequence[str],
    now: dt.datetime,
) -> CertificateInfo | None:
    """Raise CertificateProblem unless ``cert`` was issued by the CA in ``ca_pem``,
    both are valid at ``now`` and a server certificate names every address.
    Returns the chosen CA's description (None without a CA)."""
    if not ca_pem:
        _explain(kind, label, cert, info, None, None, addresses, now)
        return None
    ca_cert, ca_info = _load_chosen_ca(ca_pem)
    if ca_info.public_key_type in _KEY_TYPES_THE_VERIFIER_REFUSES:
        _explain(kind, label, cert, info, ca_cert, ca_info, addresses, now)
        return ca_info
    try:
        unnamed = _verify(kind, cert, ca_cert, addresses, _verification_time(info, ca_info, now))
    except VerificationError as rejection:
        _explain(kind, label, cert, info, ca_cert, ca_info, addresses, now)
        raise CertificateProblem(
            f"This {label} does not verify against the selected CA '{ca_info.subject}' ({_reason(rejection)}), "
            "so libvirt and QEMU may refuse it too. Re-issue it from the selected CA with a standard tool "
            "(certtool or openssl) and upload the new one.",
            code="verification_failed",
            field="cert",
        ) from None
    _check_addresses(info, unnamed)
    return ca_info


def _verify(
    kind: str, cert: x509.Certificate, ca_cert: x509.Certificate, addresses: Sequence[str], at: dt.datetime
) -> list[str]:
    """Raises VerificationError; returns the addresses the verifier cannot take
    as a name (not a DNS name or an IP address), left to be matched by hand."""
    builder = PolicyBuilder().store(Store([ca_cert])).time(at).max_chain_depth(0)
    unnamed: list[str] = []
    verified = False
    if kind == "server":
        by_name = builder.extension_policies(ca_policy=_CA_EXTENSIONS, ee_policy=_NAMED_LEAF_EXTENSIONS)
        for address in addresses:
            wanted = _normalise_address(address)
            if wanted is None:
                continue
            try:
                subject = x509.DNSName(wanted) if isinstance(wanted, str) else x509.IPAddress(wanted)
                verifier = by_name.build_server_verifier(subject)
            except ValueError:
                unnamed.append(address)
                continue
            verifier.verify(cert, [])
            verified = True
    if not verified:
        # The client verifier is the one that looks for no name; with every
        # leaf extension permitted it judges the chain and the dates alone.
        chain_only = builder.extension_policies(ca_policy=_CA_EXTENSIONS, ee_policy=_LEAF_EXTENSIONS)
        chain_only.build_client_verifier().verify(cert, [])
    return unnamed


def _verification_time(info: CertificateInfo, ca_info: CertificateInfo, now: dt.datetime) -> dt.datetime:
    # The verifier allows no clock skew: a certificate or CA that starts within
    # CLOCK_SKEW of now is judged at the later start instead.
    latest_start = max(info.not_before, ca_info.not_before)
    if now < latest_start <= now + CLOCK_SKEW:
        return latest_start
    return now


def _reason(rejection: VerificationError) -> str:
    # Trimmed for display only: nothing is decided on the wording, which
    # changes between cryptography releases.
    text = re.split(r": AlgorithmIdentifier | \(encountered processing ", str(rejection))[0].strip()
    for prefix in ("validation failed: ", "candidates exhausted: "):
        text = text.removeprefix(prefix)
    return text


def _explain(
    kind: str,
    label: str,
    cert: x509.Certificate,
    info: CertificateInfo,
    ca_cert: x509.Certificate | None,
    ca_info: CertificateInfo | None,
    addresses: Sequence[str],
    now: dt.datetime,
) -> None:
    """Raise the first rule ``cert`` breaks, in the order an admin fixes them."""
    if ca_cert is not None:
        _check_chosen_ca(ca_info, now)
    _check_validity(info, label, now, field_name="cert")
    if ca_cert is not None:
        _check_issued_by(cert, info, ca_cert, ca_info, label)
    if kind == "server":
        _check_addresses(info, addresses)


def _check_validity(info: CertificateInfo, label: str, now: dt.datetime, *, field_name: str) -> None:
    if now > info.not_after:
        raise CertificateProblem(
            f"This {label} expired on {format_utc(info.not_after)}. Issue a new certificate and upload that instead.",
            code="expired",
            field=field_name,
        )
    if now + CLOCK_SKEW < info.not_before:
        raise CertificateProblem(
            f"This {label} is not valid yet: it only becomes valid on "
            f"{format_utc(info.not_before)}. Check the clock of the machine that issued "
            "it, or wait until then to upload it.",
            code="not_yet_valid",
            field=field_name,
        )


def _load_chosen_ca(ca_pem: bytes) -> tuple[x509.Certificate, CertificateInfo]:
    try:
        ca_cert = load_certificate(ca_pem, field_name="ca")
        return ca_cert, describe(ca_cert)
    except CertificateProblem as problem:
        raise _about_chosen_ca(problem) from None


def _about_chosen_ca(problem: CertificateProblem) -> CertificateProblem:
    return CertificateProblem(
        f"The selected CA certificate cannot be used: {problem.message}",
        code=f"ca_{problem.code}",
        field="ca",
    )


def _check_chosen_ca(ca_info: CertificateInfo, now: dt.datetime) -> None:
    try:
        _check_validity(ca_info, "CA certificate", now, field_name="ca")
    except CertificateProblem as problem:
        raise _about_chosen_ca(problem) from None
    if not ca_info.is_ca:
        raise CertificateProblem(
            "The selected CA certificate is not marked as a CA (no CA:TRUE in Basic "
            "Constraints), so nothing it signed will be trusted. Select the right CA.",
            code="ca_not_ca",
            field="ca",
        )


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
