"""The URI the dashboard opens for a host.

A function, not a model property: for qemu+tls:// hosts it reads the host's
TLS assignment and may write the pkipath files (decrypting the client key),
which is I/O a property would hide at every call site.
"""

from __future__ import annotations

from .certificates.pkipath import tls_connect_uri
from .models import Host


def connect_uri(host: Host) -> str:
    """host.uri, carrying libvirt's pkipath for a qemu+tls:// host with a
    client certificate on record."""
    if host.uri.startswith("qemu+tls://"):
        return tls_connect_uri(host)
    return host.uri
