"""Websockets: one per migration, and one for the list of running migrations.

On connect a socket first receives what is already recorded (state and every
stored sample), so a reload, a late joiner or a reconnect sees the whole
history, then the live messages the job publishes.

A socket stays open only while its user may see it: the role is checked at
connect, again every WEBSOCKET_RECHECK_S seconds (the user still active,
still holding the role, the session not logged out, the password not
changed), and at once when the user logs out or loses a role.
"""

from __future__ import annotations

import asyncio
import contextlib

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save
from django.dispatch import receiver
from django.utils.crypto import constant_time_compare

from .api.models import ApiToken
from .live import LIST_GROUP, migration_state
from .models import DirtyRateMeasurement, Migration
from .planning.dirtyrate import group_name as dirty_rate_group
from .roles import AUDITORS, OPERATORS, has_role

REVOKED = 4403  # the page stops reconnecting on it


def user_group(user_pk: int) -> str:
    return f"user-{user_pk}"


def recheck_sockets(user_pk: int | None, *, logged_out_session: str | None = None) -> None:
    """Make the user's open sockets check again now (a role or account
    change), or close those of a session that logged out. Best effort: the
    periodic check catches what this misses."""
    layer = get_channel_layer()
    if layer is None or user_pk is None:
        return
    with contextlib.suppress(Exception):
        async_to_sync(layer.group_send)(
            user_group(user_pk), {"type": "auth.recheck", "logged_out_session": logged_out_session}
        )


@receiver(user_logged_out, dispatch_uid="sockets_logged_out")
def _logged_out(sender, request, user, **kwargs) -> None:
    session = getattr(request, "session", None)
    recheck_sockets(getattr(user, "pk", None), logged_out_session=getattr(session, "session_key", None))


@receiver(m2m_changed, sender=get_user_model().groups.through, dispatch_uid="sockets_roles")
def _roles_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    # group.user_set.clear() names nobody: the periodic check catches it.
    users = list(pk_set or ()) if reverse else [instance.pk]
    for pk in users:
        transaction.on_commit(lambda pk=pk: recheck_sockets(pk))


@receiver(post_save, sender=get_user_model(), dispatch_uid="sockets_account")
def _account_changed(sender, instance, created: bool, raw=False, **kwargs) -> None:
    if not created and not raw:
        transaction.on_commit(lambda: recheck_sockets(instance.pk))


@database_sync_to_async
def _still_allowed(user_pk: int, session_key: str | None, roles: tuple[str, ...], token_pk: int | None = None) -> bool:
    user = get_user_model()._default_manager.filter(pk=user_pk).first()
    if user is None or not has_role(user, *roles):
        return False
    if token_pk is not None:
        return ApiToken.objects.usable().filter(pk=token_pk, user_id=user_pk).exists()
    if session_key is None:
        return True  # a socket opened without a session (tests, tokens)
    from importlib import import_module

    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(session.get(SESSION_KEY)) != str(user_pk):
        return False  # logged out, expired or another user's now
    stored_hash = session.get(HASH_SESSION_KEY) or ""
    return constant_time_compare(stored_hash, user.get_session_auth_hash())


class RoleCheckedConsumer(AsyncJsonWebsocketConsumer):
    """A socket for users holding one of `roles` (any role when empty), for as
    long as they hold it."""

    roles: tuple[str, ...] = ()

    async def admit(self) -> bool:
        """Check the user now and keep checking; False (socket closed) when refused."""
        user = self.scope.get("user")
        if not await database_sync_to_async(has_role)(user, *self.roles):
            await self.close(code=REVOKED)
            return False
        self.user_pk = user.pk
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.token_pk = self.scope.get("api_token_pk")
        await self.channel_layer.group_add(user_group(self.user_pk), self.channel_name)
        self.watch = asyncio.ensure_future(self._keep_checking())
        return True

    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(settings.WEBSOCKET_RECHECK_S)
            if not await self._check():
                return

    async def _check(self) -> bool:
        if await _still_allowed(self.user_pk, self.session_key, self.roles, self.token_pk):
            return True
        with contextlib.suppress(Exception):
            await self.send_json(
                {"type": "revoked", "message": "Your session ended or your role changed; reload the page."}
            )
        await self.close(code=REVOKED)
        return False

    async def auth_recheck(self, event: dict) -> None:
        if event.get("logged_out_session") and event["logged_out_session"] == self.session_key:
            self.session_key = "logged-out"  # never a session: the check below closes
        await self._check()

    async def disconnect(self, code: int) -> None:
        watch = getattr(self, "watch", None)
        if watch is not None:
            watch.cancel()
        if getattr(self, "user_pk", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user_pk), self.channel_name)


@database_sync_to_async
def _history(pk: int) -> dict | None:
    migration = Migration.objects.filter(pk=pk).first()
    if migration is None:
        return None
    return {
        "type": "history",
        "migration": migration_state(migration),
        "samples": [s.as_dict() for s in migration.samples.all()],
    }


@database_sync_to_async
def _active_list() -> list[dict]:
    return [migration_state(m) for m in Migration.objects.active().order_by("created_at")]


class MigrationConsumer(RoleCheckedConsumer):
    roles = (OPERATORS, AUDITORS)

    async def connect(self) -> None:
        self.pk = int(self.scope["url_route"]["kwargs"]["pk"])
        if not await self.admit():
            return
        self.group = f"migration-{self.pk}"
        # Join before reading history: a sample published in between arrives
        # twice rather than never (the browser drops duplicates by elapsed_ms).
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        history = await _history(self.pk)
        if history is None:
            await self.send_json({"type": "error", "message": "No such migration."})
            await self.close(code=4404)
            return
        await self.send_json(history)

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def migration_sample(self, event: dict) -> None:
        await self.send_json(
            {
                "type": "sample",
                "sample": event["sample"],
                "read_at": event.get("read_at"),
                "convergence_warning": event.get("convergence_warning", ""),
                "convergence_advice": event.get("convergence_advice"),
            }
        )

    async def migration_state(self, event: dict) -> None:
        await self.send_json({"type": "state", "migration": event["migration"]})


class MigrationListConsumer(RoleCheckedConsumer):
    roles = (OPERATORS, AUDITORS)

    async def connect(self) -> None:
        if not await self.admit():
            return
        await self.channel_layer.group_add(LIST_GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"type": "list", "migrations": await _active_list()})

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        await self.channel_layer.group_discard(LIST_GROUP, self.channel_name)

    async def migration_sample(self, event: dict) -> None:
        await self.send_json({"type": "sample", "id": event["id"], "sample": event["sample"]})

    async def migration_state(self, event: dict) -> None:
        await self.send_json({"type": "state", "migration": event["migration"]})


@database_sync_to_async
def _vm_readings(pk: int) -> tuple[str, list[dict]] | None:
    from hosts.models import VirtualMachine

    vm = VirtualMachine.objects.filter(pk=pk).first()
    if vm is None:
        return None
    rows = DirtyRateMeasurement.objects.filter(vm_uuid=vm.uuid)[:200]
    return vm.uuid, [r.as_dict() for r in reversed(rows)]


class DirtyRateConsumer(RoleCheckedConsumer):
    """Dirty-rate readings of one VM: stored history first, then live ones."""

    async def connect(self) -> None:
        if not await self.admit():
            return
        found = await _vm_readings(int(self.scope["url_route"]["kwargs"]["pk"]))
        if found is None:
            await self.close(code=4404)
            return
        vm_uuid, readings = found
        self.group = dirty_rate_group(vm_uuid)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "history", "samples": readings})

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dirtyrate_sample(self, event: dict) -> None:
        await self.send_json({"type": "sample", "sample": event["sample"]})

    async def dirtyrate_done(self, event: dict) -> None:
        await self.send_json({"type": "done", "series": event["series"], "count": event["count"]})
