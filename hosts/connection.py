"""The URI the dashboard opens for a host.

A function, not a model property: for qemu+tls:// hosts it reads the host's
TLS assignment and may write the pkipath files (decrypting the client key),
which is I/O a property would hide at every call site.

The stored URI is checked against the allow-list (hosts.uris) every time,
before the dashboard's own pkipath is added: a row written before the
allow-list, or by SQL, is refused instead of opened.
"""

from __future__ import annotations

from .certificates.pkipath import tls_connect_uri
from .models import Host
from .uris import require_allowed


def connect_uri(host: Host) -> str:
    """host.uri, carrying libvirt's pkipath for a qemu+tls:// host with a
    client certificate on record. A URI the allow-list refuses raises a
    GatewayError saying why, and nothing is opened."""
    require_allowed(host.uri, host_name=host.name)
    if host.uri.startswith("qemu+tls://"):
        return tls_connect_uri(host)
    return host.uri
