"""The private ``pkipath`` directory libvirt reads when it opens a qemu+tls:// connection.

libvirt takes the CA and the client pair as files (``cacert.pem``,
``clientcert.pem``, ``clientkey.pem``) in the directory named by the URI's
``pkipath`` parameter. The dashboard writes the material assigned to a host
there, decrypting the client key, and reuses the directory while the material
stays the same; it deletes it when the assignment goes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings

from hosts.gateway import GatewayError
from hosts.models import Host

from .errors import CertificateProblem
from .models import Certificate, HostTLS

PKIPATH_FILES = ("cacert.pem", "clientcert.pem", "clientkey.pem")


class TLSMaterialError(GatewayError):
    """The TLS material on record cannot be written for libvirt."""


def tls_connect_uri(host: Host) -> str:
    """host.uri with `pkipath=DIR`: DIR holds the CA and client pair assigned to
    the host, written to a private directory and reused while the material stays
    the same. Without an assignment libvirt uses its default /etc/pki paths."""
    if host.pk is None:
        return host.uri
    material = HostTLS.objects.select_related("ca", "client").filter(host=host).first()
    if material is None:
        return host.uri
    directory = _ensure_material_dir(host, material.ca, material.client)
    return _with_query_param(host.uri, "pkipath", str(directory))


def _with_query_param(uri: str, key: str, value: str) -> str:
    parts = urlsplit(uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def _pki_root() -> Path:
    configured = getattr(settings, "TLS_PKI_DIR", None)
    root = Path(configured) if configured else Path(settings.BASE_DIR) / "var" / "pki"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        # A read-only checkout: fall back to a per-user directory in /tmp.
        root = Path(tempfile.gettempdir()) / f"vm-migrator-pki-{os.geteuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
    _require_private_dir(root)
    return root


def _require_private_dir(path: Path) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise TLSMaterialError(
            f"{path} is not a directory owned by the dashboard's user, so private keys cannot be written there "
            "safely. Remove it (or set TLS_PKI_DIR) and try again.",
            uri=str(path),
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def material_dir_name(host: Host, ca: Certificate, client: Certificate) -> str:
    # Fingerprints are public; the key is fixed by the client certificate.
    digest = hashlib.sha256(f"{ca.fingerprint_sha256}|{client.fingerprint_sha256}".encode()).hexdigest()
    return f"{host.pk}-{digest[:16]}"


def _ensure_material_dir(host: Host, ca: Certificate, client: Certificate) -> Path:
    root = _pki_root()
    final = root / material_dir_name(host, ca, client)
    wanted = {"cacert.pem": ca.pem.encode(), "clientcert.pem": client.pem.encode()}
    if _material_ok(final, wanted):
        return final
    try:
        key_pem = client.decrypted_key_pem()
    except CertificateProblem as problem:
        raise TLSMaterialError(
            f"The private key of the client certificate '{client.name}' assigned to {host.name} cannot be used: "
            f"{problem.message}",
            uri=host.uri,
        ) from None
    # Written complete in a private temporary directory, then renamed into
    # place, so libvirt never reads a half-written key.
    tmp = Path(tempfile.mkdtemp(prefix=f".{host.pk}-", dir=root))
    try:
        for filename, data in (*wanted.items(), ("clientkey.pem", key_pem)):
            _write_private(tmp / filename, data)
        if (final.exists() or final.is_symlink()) and not _material_ok(final, wanted):
            _remove_tree(final)  # damaged or tampered with: written again
        try:
            os.rename(tmp, final)
        except OSError:
            if not _material_ok(final, wanted):  # else another process just wrote the same
                raise
    except OSError as exc:
        raise TLSMaterialError(f"Could not write the TLS material for {host.name} to {root}: {exc}") from exc
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    if not _material_ok(final, wanted):
        raise TLSMaterialError(f"The TLS material for {host.name} in {final} could not be written completely.")
    forget_material(host, keep=final.name)
    return final


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _material_ok(directory: Path, wanted: dict[str, bytes]) -> bool:
    """A cached directory is reused only when it is private, ours and complete."""
    try:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
            return False
        for filename in PKIPATH_FILES:
            file_info = os.lstat(directory / filename)
            if (
                not stat.S_ISREG(file_info.st_mode)
                or file_info.st_uid != os.geteuid()
                or stat.S_IMODE(file_info.st_mode) & 0o077
                or file_info.st_size == 0
            ):
                return False
        return all((directory / filename).read_bytes() == data for filename, data in wanted.items())
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def forget_material(host: Host | int, keep: str = "") -> None:
    """Delete the host's written TLS material (all but `keep`): decrypted keys do
    not outlive their assignment. `host` may be a primary key: the host may be gone."""
    host_pk = host if isinstance(host, int) else host.pk
    try:
        root = _pki_root()
    except (OSError, TLSMaterialError):
        return
    for entry in root.glob(f"{host_pk}-*"):
        if entry.name != keep:
            _remove_tree(entry)


def forget_orphaned_material() -> list[str]:
    """Delete material directories whose host has no TLS assignment any more
    (left by a deletion made while the files could not be removed)."""
    try:
        root = _pki_root()
    except (OSError, TLSMaterialError):
        return []
    assigned = {str(pk) for pk in HostTLS.objects.values_list("host_id", flat=True)}
    removed = []
    for entry in root.iterdir():
        owner = entry.name.lstrip(".").split("-", 1)[0]
        if owner.isdigit() and owner not in assigned:
            _remove_tree(entry)
            removed.append(entry.name)
    return removed
