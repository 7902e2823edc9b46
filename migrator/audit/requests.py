"""Audit events for what a signed-in user does on a page: the request says who
acts and from where."""

from __future__ import annotations

from .models import AuditEvent


def client_address(request) -> str | None:
    # Signals may hand over no request (a login from a management command).
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def audit(request, action: str, obj=None, **details) -> AuditEvent:
    return AuditEvent.record(
        action, actor=request.user, obj=obj, details=details, client_address=client_address(request)
    )
