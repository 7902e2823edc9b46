"""Changes to the certificate store: uploads, replacements, a host's TLS assignment, removal.

Every change is an audit event: ``certificate.uploaded``,
``certificate.replaced``, ``certificate.assigned`` and ``certificate.removed``,
written in the same transaction as the change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from hosts.models import Host
from migrator.audit.models import AuditEvent

from . import secrets
from .errors import CertificateProblem
from .models import Certificate, CertificateKind, HostTLS, host_addresses
from .pem import DEFAULT_MAX_BYTES
from .pkipath import forget_material, material_dir_name
from .policy import CERT_KINDS, ValidatedUpload, validate_upload


def max_upload_bytes() -> int:
    return int(getattr(settings, "CERT_MAX_UPLOAD_BYTES", DEFAULT_MAX_BYTES))


@dataclass
class PreparedUpload:
    """A validated upload, ready to save: nothing in here is plaintext secret."""

    kind: str
    name: str
    validated: ValidatedUpload
    encrypted_key: bytes | None
    ca: Certificate | None = None
    host: Host | None = None
    replaces: Certificate | None = None
    assign_hosts: list[Host] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_upload(
    kind: str,
    cert_pem: bytes,
    key_pem: bytes | None = None,
    passphrase: str | None = None,
    *,
    ca: Certificate | None = None,
    host: Host | None = None,
    replaces: Certificate | None = None,
    assign_hosts: Iterable[Host] = (),
    name: str = "",
    now: dt.datetime | None = None,
) -> PreparedUpload:
    """Check an upload completely; raises CertificateProblem (with the form field
    it belongs to) and stores nothing."""
    if kind not in CERT_KINDS:
        raise ValueError(f"kind must be one of {CERT_KINDS}, not {kind!r}")
    assign_hosts = list(assign_hosts)
    label = CertificateKind(kind).label.lower()

    if kind != CertificateKind.CA and ca is None:
        raise CertificateProblem(
            f"Choose the CA that issued this {label}. If it is not in the list, upload that CA certificate first.",
            code="ca_required",
            field="ca",
        )
    if ca is not None and (ca.kind != CertificateKind.CA or not ca.active):
        raise CertificateProblem(
            f"{ca} is not a current CA certificate; choose one from the list.", code="ca_not_on_record", field="ca"
        )
    if kind == CertificateKind.SERVER:
        if host is None:
            raise CertificateProblem(
                "Choose the host this migration certificate is deployed on: its addresses are checked against the "
                "certificate's names.",
                code="host_required",
                field="host",
            )
        if key_pem:
            raise CertificateProblem(
                "Do not upload the host's private key: it stays on the host, where QEMU and libvirtd use it. "
                "Upload the certificate alone.",
                code="server_key_uploaded",
                field="key",
            )
        current = Certificate.objects.active().filter(kind=CertificateKind.SERVER, host=host).first()
        if replaces is None:
            replaces = current
        elif replaces.pk != getattr(current, "pk", None):
            raise CertificateProblem(
                f"{replaces} is not {host.name}'s current migration certificate; a new one for {host.name} "
                f"replaces {current or 'nothing (it has none yet)'}.",
                code="replaces_other_host",
                field="replaces",
            )
    elif host is not None:
        raise CertificateProblem(
            "Only migration server certificates are deployed on a host; leave the host empty for this kind.",
            code="host_not_applicable",
            field="host",
        )
    if assign_hosts and kind != CertificateKind.CLIENT:
        raise CertificateProblem(
            "Only a client certificate (with its CA) is assigned to hosts for qemu+tls:// connections; "
            "leave 'use for hosts' empty for this kind.",
            code="assign_not_applicable",
            field="assign_hosts",
        )
    if replaces is not None and (replaces.kind != kind or not replaces.active):
        raise CertificateProblem(
            f"{replaces} cannot be replaced by a {label}: choose a current certificate of the same kind.",
            code="replaces_wrong_kind",
            field="replaces",
        )

    addresses = host_addresses(host) if host is not None else []
    validated = validate_upload(
        kind,
        cert_pem,
        key_pem or None,
        passphrase or None,
        ca.pem.encode() if ca is not None else None,
        addresses,
        now,
        max_upload_bytes(),
    )
    info = validated.info
    warnings = list(validated.warnings)
    if kind == CertificateKind.SERVER and not addresses:
        warnings.append(
            f"{host.name} has no migration address, so the certificate's names were not checked; set the host's "
            "migration address and the TLS pre-check will check them."
        )
    duplicate = Certificate.objects.active().filter(kind=kind, fingerprint_sha256=info.sha256_fingerprint).first()
    if duplicate is not None:
        raise CertificateProblem(
            f"This certificate is already on record as '{duplicate.name}' (uploaded "
            f"{duplicate.uploaded_at:%Y-%m-%d} by {duplicate.uploaded_by_username or 'someone'}). "
            "Nothing needs uploading.",
            code="duplicate",
            field="cert",
        )
    encrypted_key = None
    if validated.key_pem_unencrypted is not None:
        encrypted_key = secrets.encrypt_secret(validated.key_pem_unencrypted, secrets.secret_keys())
    return PreparedUpload(
        kind=kind,
        name=(name or "").strip() or info.common_name or info.subject,
        validated=validated,
        encrypted_key=encrypted_key,
        ca=ca,
        host=host,
        replaces=replaces,
        assign_hosts=assign_hosts,
        warnings=warnings,
    )


def save_upload(prepared: PreparedUpload, *, user=None, client_address: str | None = None) -> Certificate:
    """Store a prepared upload: the new row, the retirement of what it replaces,
    the moved assignments and the audit events commit together or not at all."""
    info = prepared.validated.info
    with transaction.atomic():
        replaced = None
        if prepared.replaces is not None:
            replaced = Certificate.objects.select_for_update().filter(pk=prepared.replaces.pk, active=True).first()
            if replaced is None:
                raise CertificateProblem(
                    f"{prepared.replaces} was replaced or removed in the meantime; reload the page and choose again.",
                    code="replaced_meanwhile",
                    field="replaces",
                )
            # Before the insert: only one active migration certificate per host.
            replaced.retire()
        cert = Certificate(
            kind=prepared.kind,
            name=prepared.name[:200],
            pem=info.pem,
            subject=info.subject,
            common_name=info.common_name[:255],
            issuer=info.issuer,
            serial_hex=info.serial_hex,
            fingerprint_sha256=info.sha256_fingerprint,
            sans=info.sans,
            key_usage=info.key_usage,
            extended_key_usage=info.extended_key_usage,
            is_ca=info.is_ca,
            not_before=info.not_before,
            not_after=info.not_after,
            public_key_type=info.public_key_type,
            public_key_bits=info.public_key_bits,
            encrypted_key=prepared.encrypted_key,
            ca=prepared.ca,
            host=prepared.host,
            replaces=replaced,
            warnings=prepared.warnings,
            uploaded_by=user if getattr(user, "pk", None) else None,
            uploaded_by_username=getattr(user, "username", "") or "",
        )
        try:
            with transaction.atomic():
                cert.save()
        except IntegrityError:
            raise CertificateProblem(
                "This certificate was uploaded by someone else a moment ago; it is already on record.",
                code="duplicate",
                field="cert",
            ) from None
        details = cert.snapshot()
        if replaced is not None:
            moved = _move_assignments(replaced, cert)
            details |= {"replaced": replaced.snapshot(), "moved_hosts": [h.name for h in moved]}
            _audit("certificate.replaced", cert, user, client_address, details)
            if cert.kind != CertificateKind.SERVER:
                transaction.on_commit(lambda: [forget_material(h) for h in moved])
        else:
            _audit("certificate.uploaded", cert, user, client_address, details)
        for host in prepared.assign_hosts:
            assign_host_tls(host, cert.ca, cert, user=user, client_address=client_address)
    return cert


def store_upload(
    kind: str,
    cert_pem: bytes,
    key_pem: bytes | None = None,
    passphrase: str | None = None,
    *,
    user=None,
    client_address: str | None = None,
    **options,
) -> Certificate:
    """Validate and store in one go (management commands, scripts, tests)."""
    prepared = prepare_upload(kind, cert_pem, key_pem, passphrase, **options)
    return save_upload(prepared, user=user, client_address=client_address)


def _move_assignments(replaced: Certificate, cert: Certificate) -> list[Host]:
    """Hosts using the replaced CA or client pair now use its replacement."""
    if cert.kind == CertificateKind.SERVER:
        return [cert.host] if cert.host_id else []
    slot = "ca" if cert.kind == CertificateKind.CA else "client"
    rows = HostTLS.objects.select_related("host").filter(**{slot: replaced})
    hosts = [row.host for row in rows]
    rows.update(**{slot: cert})
    return hosts


def _audit(action: str, obj, user, client_address: str | None, details: dict) -> None:
    AuditEvent.record(action, actor=user, obj=obj, details=details, client_address=client_address)


def assign_host_tls(
    host: Host,
    ca: Certificate | None,
    client: Certificate | None,
    *,
    user=None,
    client_address: str | None = None,
) -> HostTLS | None:
    """Give `host` the CA + client pair for its qemu+tls:// URI (both None: take it away)."""
    if ca is None and client is None:
        with transaction.atomic():
            previous = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
            if previous is not None:
                _audit(
                    "certificate.assigned",
                    host,
                    user,
                    client_address,
                    {"host": host.name, "ca": None, "client": None, "previous": _assignment(previous)},
                )
                previous.delete()
                transaction.on_commit(lambda: forget_material(host))
        return None
    if ca is None or client is None:
        raise CertificateProblem(
            "Choose both the CA and the client certificate: libvirt needs the CA to check the host and the client "
            "certificate to identify the dashboard.",
            code="incomplete_assignment",
            field="ca" if ca is None else "client",
        )
    if ca.kind != CertificateKind.CA or not ca.active:
        raise CertificateProblem(f"{ca} is not a current CA certificate.", code="not_a_ca", field="ca")
    if client.kind != CertificateKind.CLIENT or not client.active or not client.has_key:
        raise CertificateProblem(
            f"{client} is not a current client certificate with its private key.", code="not_a_client", field="client"
        )
    if client.ca_id != ca.pk:
        raise CertificateProblem(
            f"The client certificate '{client.name}' was issued by '{client.issuer}', not by the CA '{ca.name}'. "
            "Hosts that trust this CA would refuse it: choose the CA that issued it, or a client certificate that "
            "CA issued.",
            code="client_from_other_ca",
            field="client",
        )
    with transaction.atomic():
        previous = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
        before = _assignment(previous) if previous else None
        row, _ = HostTLS.objects.update_or_create(
            host=host,
            defaults={
                "ca": ca,
                "client": client,
                "assigned_by": user if getattr(user, "pk", None) else None,
                "assigned_by_username": getattr(user, "username", "") or "",
                "assigned_at": timezone.now(),
            },
        )
        _audit(
            "certificate.assigned",
            host,
            user,
            client_address,
            {"host": host.name, **_assignment(row), "previous": before},
        )
        transaction.on_commit(lambda: forget_material(host, keep=material_dir_name(host, ca, client)))
    return row


def _assignment(row: HostTLS) -> dict:
    return {
        "ca": {"certificate_id": row.ca_id, "fingerprint_sha256": row.ca.fingerprint_sha256, "name": row.ca.name},
        "client": {
            "certificate_id": row.client_id,
            "fingerprint_sha256": row.client.fingerprint_sha256,
            "name": row.client.name,
        },
    }


def remove_certificate(cert: Certificate, *, user=None, client_address: str | None = None) -> None:
    """Delete a certificate (and its encrypted key) unless something still relies on it."""
    with transaction.atomic():
        cert = Certificate.objects.select_for_update().get(pk=cert.pk)
        users = sorted(
            {row.host.name for row in HostTLS.objects.select_related("host").filter(Q(ca=cert) | Q(client=cert))}
        )
        if users:
            raise CertificateProblem(
                f"{cert} is assigned to {', '.join(users)} for qemu+tls:// connections. Assign other material to "
                f"{'that host' if len(users) == 1 else 'those hosts'} (or replace this certificate) first.",
                code="in_use",
            )
        if cert.kind == CertificateKind.CA:
            issued = list(cert.issued.filter(active=True).values_list("name", flat=True))
            if issued:
                raise CertificateProblem(
                    f"{len(issued)} current certificate{'s were' if len(issued) != 1 else ' was'} issued by this CA "
                    f"({', '.join(issued)}); remove or replace {'them' if len(issued) != 1 else 'it'} first.",
                    code="ca_in_use",
                )
        _audit("certificate.removed", cert, user, client_address, cert.snapshot())
        cert.delete()


def rotate_stored_keys() -> tuple[int, int]:
    """Re-encrypt every stored private key under the first of SECRETS_KEYS,
    so the other keys can be retired. Returns (re-encrypted, already under the
    first key). All or nothing: a key none of SECRETS_KEYS opens stops it
    before anything is written."""
    keys = secrets.secret_keys()
    newest = keys[:1]
    rotated = current = 0
    with transaction.atomic():
        rows = list(Certificate.objects.select_for_update().filter(encrypted_key__isnull=False).order_by("pk"))
        for cert in rows:
            token = bytes(cert.encrypted_key)
            try:
                secrets.decrypt_secret(token, newest)
                current += 1
                continue
            except CertificateProblem:
                pass
            try:
                new_token = secrets.rotate_secret(token, keys)
            except CertificateProblem:
                raise CertificateProblem(
                    f"The private key of certificate '{cert.name}' (#{cert.pk}) opens with none of SECRETS_KEYS. "
                    "Add the key it was stored under to SECRETS_KEYS (after the new one) and run rotate_secrets again; "
                    "nothing was changed.",
                    code="decrypt_failed",
                ) from None
            Certificate.objects.filter(pk=cert.pk).update(encrypted_key=new_token)
            rotated += 1
        if rotated:
            AuditEvent.record("secrets.rotated", details={"re_encrypted": rotated, "already_current": current})
    return rotated, current
