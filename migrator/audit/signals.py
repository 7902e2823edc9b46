"""Audit events for what happens outside the dashboard's own views: logins
(failed and successful), role (group) changes and superuser grants, wherever
they are made — the admin, a management command or a shell.

Signals carry no request, so the admin says who is acting through
`acting_as()`; changes made elsewhere are recorded without an actor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from migrator.roles import ALL_ROLES

from .models import AuditEvent
from .requests import client_address

User = get_user_model()

_acting: ContextVar[tuple[Any, str | None] | None] = ContextVar("audit_acting", default=None)


@contextmanager
def acting_as(user, client_address: str | None = None) -> Iterator[None]:
    """Attribute the audit events recorded inside the block to `user`."""
    token = _acting.set((user, client_address))
    try:
        yield
    finally:
        _acting.reset(token)


def _record(action: str, **kwargs: Any) -> AuditEvent:
    actor, address = _acting.get() or (None, None)
    kwargs.setdefault("actor", actor)
    kwargs.setdefault("client_address", address)
    return AuditEvent.record(action, **kwargs)


def _record_login_refusal(action: str, username: str, address: str | None) -> None:
    """A refused login, named by the user name tried (which may not exist)."""
    username = str(username or "")[:150]
    user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first() if username else None
    AuditEvent.record(action, obj=user, object_repr=username, details={"username": username}, client_address=address)


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def login_failed(sender, credentials: dict, request=None, **kwargs) -> None:
    username = credentials.get(User.USERNAME_FIELD) or credentials.get("username")
    _record_login_refusal("auth.login_failed", username, client_address(request))


@receiver(user_logged_in, dispatch_uid="audit_logged_in")
def logged_in(sender, request, user, **kwargs) -> None:
    AuditEvent.record("auth.login", actor=user, obj=user, client_address=client_address(request))


# ------------------------------------------------------------- superusers


@receiver(pre_save, sender=User, dispatch_uid="audit_superuser_before")
def remember_superuser_flag(sender, instance, update_fields=None, raw=False, **kwargs) -> None:
    if raw or instance.pk is None or (update_fields is not None and "is_superuser" not in update_fields):
        instance._audit_was_superuser = None
        return
    instance._audit_was_superuser = (
        sender._default_manager.filter(pk=instance.pk).values_list("is_superuser", flat=True).first()
    )


@receiver(post_save, sender=User, dispatch_uid="audit_superuser_after")
def record_superuser_change(sender, instance, created: bool, raw=False, **kwargs) -> None:
    if raw:
        return
    before = False if created else getattr(instance, "_audit_was_superuser", None)
    if before is None or bool(before) == instance.is_superuser:
        return
    _record("user.superuser_granted" if instance.is_superuser else "user.superuser_revoked", obj=instance)


@receiver(post_delete, sender=User, dispatch_uid="audit_user_deleted")
def record_user_deleted(sender, instance, **kwargs) -> None:
    _record("user.deleted", obj=instance, details={"username": instance.get_username()})


# ------------------------------------------------------------------ roles


def _role_names(user) -> list[str]:
    return sorted(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="audit_roles")
def record_role_change(sender, instance, action: str, reverse: bool, model, pk_set, **kwargs) -> None:
    """user.groups.add/remove/clear/set and group.user_set.* alike."""
    if action == "pre_clear":
        # A clear carries no pk_set: remember what is about to go.
        related = instance.user_set.all() if reverse else instance.groups.all()
        instance._audit_cleared = set(related.values_list("pk", flat=True))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if action == "post_clear":
        pk_set = getattr(instance, "_audit_cleared", set())
    if not pk_set:
        return
    verb = "user.role_added" if action == "post_add" else "user.role_removed"
    if reverse:
        pairs = [(user, instance) for user in User._default_manager.filter(pk__in=pk_set)]
    else:
        pairs = [(instance, group) for group in Group.objects.filter(pk__in=pk_set)]
    for user, group in pairs:
        _record(verb, obj=user, details={"role": group.name, "roles_now": _role_names(user)})


@receiver(user_locked_out, dispatch_uid="audit_locked_out")
def locked_out(sender, request=None, username: str = "", ip_address: str | None = None, **kwargs) -> None:
    """django-axes refused a login after too many wrong passwords."""
    _record_login_refusal("auth.locked_out", username, ip_address or client_address(request))
