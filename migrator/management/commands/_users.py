"""Who acts from the command line: a named user with the role the action needs."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from migrator.roles import OPERATORS, has_role


def acting_user(username: str, *, superuser: bool = False):
    found = get_user_model().objects.filter(username=username).first()
    if found is None:
        raise CommandError(f"No user named {username}; create one with manage.py create_user.")
    if superuser and not found.is_superuser:
        raise CommandError(f"{username} is not a superuser; only superusers settle a migration by hand.")
    if not superuser and not has_role(found, OPERATORS):
        raise CommandError(f"{username} is not an operator; only operators act on migrations.")
    return found
