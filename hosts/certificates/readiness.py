"""Whether the certificates on record let QEMU encrypt a migration, and which expire soon."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.utils import timezone

from hosts.models import Host

from .errors import CertificateProblem
from .models import EXPIRY_DANGER_DAYS, Certificate, CertificateKind, host_addresses
from .policy import EXPIRY_WARNING_DAYS, validate_upload

PASS, WARN, FAIL = "pass", "warn", "fail"


def _fmt_date(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _days(n: int) -> str:
    return f"{n} day{'' if n == 1 else 's'}"


def tls_readiness(source: Host, destination: Host, now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """Can QEMU encrypt a migration between these hosts? One (status, message)
    per finding: each host's migration certificate is on record, valid, covers
    the host's migration address, and both come from the same CA."""
    now = now or timezone.now()
    results: list[tuple[str, str]] = []
    found: dict[str, Certificate] = {}
    for role, host in (("source", source), ("destination", destination)):
        cert = Certificate.objects.active().select_related("ca").filter(kind=CertificateKind.SERVER, host=host).first()
        if cert is None:
            results.append(
                (
                    FAIL,
                    f"No migration certificate is on record for {host.name} (the {role}). A security admin must "
                    f"upload the server certificate QEMU uses on {host.name} (server-cert.pem in its "
                    "migrate_tls_x509_cert_dir, /etc/pki/qemu by default) under Certificates.",
                )
            )
            continue
        found[role] = cert
        results.extend(_server_certificate_findings(role, host, cert, now))
    if len(found) == 2:
        results.append(_same_ca_finding(source, destination, found["source"], found["destination"]))
    return results


def _server_certificate_findings(role: str, host: Host, cert: Certificate, now: dt.datetime) -> list[tuple[str, str]]:
    which = f"{host.name}'s migration certificate '{cert.name}' (SHA-256 {cert.short_fingerprint})"
    addresses = host_addresses(host)
    try:
        validate_upload(
            "server",
            cert.pem.encode(),
            ca_pem=cert.ca.pem.encode() if cert.ca_id else None,
            addresses=addresses,
            now=now,
        )
    except CertificateProblem as problem:
        return [(FAIL, f"{which} cannot be used on the {role}: {problem.message}")]
    findings = []
    days = cert.days_left_at(now)
    if days <= EXPIRY_WARNING_DAYS:
        findings.append(
            (WARN, f"{which} expires in {_days(days)}, on {_fmt_date(cert.not_after)}; upload its renewal soon.")
        )
    if cert.ca_id and cert.ca.days_left_at(now) <= EXPIRY_WARNING_DAYS:
        findings.append(
            (
                WARN,
                f"The CA '{cert.ca.name}' that issued {which} expires in {_days(cert.ca.days_left_at(now))}, "
                f"on {_fmt_date(cert.ca.not_after)}.",
            )
        )
    if not addresses:
        findings.append(
            (
                WARN,
                f"{host.name} has no migration address, so it could not be checked that {which} names the address "
                "QEMU connects to; set the host's migration address.",
            )
        )
    else:
        findings.append(
            (
                PASS,
                f"{which} covers {', '.join(addresses)} and is valid until {_fmt_date(cert.not_after)} "
                f"({_days(days)} left).",
            )
        )
    return findings


def _same_ca_finding(source: Host, destination: Host, a: Certificate, b: Certificate) -> tuple[str, str]:
    if a.ca_id is None or b.ca_id is None:
        missing = ", ".join(h.name for h, c in ((source, a), (destination, b)) if c.ca_id is None)
        return (
            FAIL,
            f"The CA that issued the migration certificate of {missing} is no longer on record, so it cannot be "
            "checked that both hosts trust each other. Upload the CA and the host's certificate again.",
        )
    if a.ca.fingerprint_sha256 != b.ca.fingerprint_sha256:
        return (
            FAIL,
            f"{source.name}'s migration certificate was issued by the CA '{a.ca.name}', {destination.name}'s by "
            f"'{b.ca.name}'. Each host checks the other's certificate against its own CA, so the TLS handshake "
            "would fail: re-issue one of them from the other CA.",
        )
    return (PASS, f"Both migration certificates were issued by the CA '{a.ca.name}'.")


def tls_available(source: Host, destination: Host) -> bool:
    """Whether the wizard may offer TLS for this pair (no failing finding)."""
    return all(status != FAIL for status, _ in tls_readiness(source, destination))


@dataclass(frozen=True)
class ExpiryWarning:
    certificate: Certificate
    days_left: int
    message: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "danger" if self.days_left <= EXPIRY_DANGER_DAYS else "warning"


def expiry_warnings(now: dt.datetime | None = None) -> list[ExpiryWarning]:
    """Every current certificate with 30 days or less left (or expired), soonest first."""
    now = now or timezone.now()
    warnings = []
    for cert in Certificate.objects.expiring_within(EXPIRY_WARNING_DAYS, now).select_related("host"):
        days = cert.days_left_at(now)
        if days > EXPIRY_WARNING_DAYS:
            continue
        hosts = cert.served_hosts()
        serves = f"it serves {', '.join(h.name for h in hosts)}" if hosts else "it serves no host yet"
        if cert.not_after < now:
            ago = (now - cert.not_after).days
            when = f"expired {f'{_days(ago)} ago' if ago else 'today'}, on {_fmt_date(cert.not_after)}"
            fix = "Upload its replacement now: TLS connections and encrypted migrations that use it fail."
        elif days == 0:
            when = f"expires today ({cert.not_after:%Y-%m-%d %H:%M} UTC)"
            fix = "Upload its replacement now."
        else:
            when = f"expires in {_days(days)}, on {_fmt_date(cert.not_after)}"
            fix = "Upload its renewal as a replacement before then."
        message = f"{cert.get_kind_display()} '{cert.name}' {when}; {serves}. {fix}"
        warnings.append(ExpiryWarning(certificate=cert, days_left=days, message=message, hosts=hosts))
    return warnings
