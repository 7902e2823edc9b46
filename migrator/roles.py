"""The dashboard's roles and the decorators that enforce them.

Roles are Django groups created by a data migration. Superusers hold every
role and are the only ones who manage hosts and users.
"""

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

OPERATORS = "operators"
AUDITORS = "auditors"
SECURITY_ADMINS = "security admins"
ALL_ROLES = (OPERATORS, AUDITORS, SECURITY_ADMINS)
ROLE_CHOICES = [(OPERATORS, "Operator"), (AUDITORS, "Auditor"), (SECURITY_ADMINS, "Security admin")]


def user_roles(user) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    if user.is_superuser:
        return set(ALL_ROLES)
    cached = getattr(user, "_role_cache", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
        user._role_cache = cached
    return cached


def has_role(user, *roles: str) -> bool:
    """True when the user holds any of `roles` (superusers hold them all)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return bool(user_roles(user) & set(roles or ALL_ROLES))


def sees_migrations(user) -> bool:
    """Operators and auditors see migration records; security admins do not."""
    return has_role(user, OPERATORS, AUDITORS)


def role_required(*roles: str) -> Callable:
    """Login, then 403 unless the user holds one of `roles` (any role if none given)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        @login_required
        def wrapped(request, *args, **kwargs):
            if not has_role(request.user, *roles):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def superuser_required(view: Callable) -> Callable:
    @wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not request.user.is_superuser:
            raise PermissionDenied("Only administrators (superusers) can do this.")
        return view(request, *args, **kwargs)

    return wrapped


def roles_context(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    roles = user_roles(user)
    return {
        "is_operator": OPERATORS in roles,
        "is_auditor": AUDITORS in roles,
        "is_security_admin": SECURITY_ADMINS in roles,
        # Migration records (lists, links, counts) are for operators and auditors.
        "sees_migrations": bool(roles & {OPERATORS, AUDITORS}),
        "user_roles": sorted(roles),
    }


class SuperuserOnly:
    """Only superusers manage users and groups, whatever permissions staff hold."""

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser
