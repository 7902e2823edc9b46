"""Dirty-rate measurements (R8) shown on the VM page."""

from __future__ import annotations


def vm_dirty_rate_context(request, vm) -> dict:
    return {}
