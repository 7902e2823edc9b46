"""The browser's roles, for the API: a view names the roles that may read
(GET, HEAD, OPTIONS) and the roles that may write; superusers hold every
role. A view with `superuser_writes` lets only superusers write."""

from __future__ import annotations

from rest_framework import permissions

from ..roles import has_role


class ByRole(permissions.BasePermission):
    """Reads by `view.read_roles`, writes by `view.write_roles` (an empty
    tuple: any role), or superusers only when `view.superuser_writes`."""

    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if request.method in permissions.SAFE_METHODS:
            return has_role(user, *getattr(view, "read_roles", ()))
        if getattr(view, "superuser_writes", False):
            self.message = "Only a superuser may change this."
            return bool(user.is_superuser and user.is_active)
        return has_role(user, *getattr(view, "write_roles", getattr(view, "read_roles", ())))
