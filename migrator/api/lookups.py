"""What several API modules share: who asks (for the audit), and finding a
VM or a host from the id or name a script sends."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError

from hosts.models import Host, VirtualMachine

from ..actions import Requester
from ..audit.requests import client_address


def requester(request) -> Requester:
    return Requester(request.user, "API", client_address(request))


def vm_named(value: Any, field: str = "vm") -> VirtualMachine:
    """The VM by its id or its UUID."""
    text = str(value if value is not None else "").strip()
    vms = VirtualMachine.objects.select_related("host")
    vm = vms.filter(pk=int(text)).first() if text.isdigit() else vms.filter(uuid__iexact=text).first()
    if vm is None:
        raise ValidationError({field: [f"There is no VM {text!r}: give its id (/api/v1/vms/) or its UUID."]})
    return vm


def host_named(value: Any, field: str = "destination") -> Host:
    """The host by its id or its name."""
    text = str(value if value is not None else "").strip()
    host = Host.objects.filter(pk=int(text)).first() if text.isdigit() else Host.objects.filter(name=text).first()
    if host is None:
        raise ValidationError({field: [f"There is no host {text!r}: give its id (/api/v1/hosts/) or its name."]})
    return host


def as_form_value(value: Any) -> Any:
    """A JSON value as a browser would post it (a ticked box is "on")."""
    if value is True:
        return "on"
    if value is None:
        return ""
    if isinstance(value, list):
        return [str(v) for v in value]
    return value
