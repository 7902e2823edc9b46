"""Audit events for what a signed-in user does on a page: the request says who
acts and from where."""

from __future__ import annotations

from axes.helpers import get_client_ip_address

from .models import AuditEvent


def client_address(request) -> str | None:
    """The client's address as login throttling counts it: REMOTE_ADDR, or
    behind a TLS proxy (AXES_IPWARE_PROXY_COUNT) the one it forwarded."""
    # Signals may hand over no request (a login from a management command).
    if request is None:
        return None
    return get_client_ip_address(request) or None


def audit(request, action: str, obj=None, **details) -> AuditEvent:
    return AuditEvent.record(
        action, actor=request.user, obj=obj, details=details, client_address=client_address(request)
    )
