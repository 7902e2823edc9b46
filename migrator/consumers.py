"""Websockets: one per migration, and one for the list of running migrations.

On connect a socket first receives what is already recorded (state and every
stored sample), so a reload, a late joiner or a reconnect sees the whole
history, then the live messages the job publishes.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .live import LIST_GROUP, migration_state
from .models import DirtyRateMeasurement, Migration
from .planning.dirtyrate import group_name as dirty_rate_group
from .roles import AUDITORS, OPERATORS, has_role


@database_sync_to_async
def _allowed(user) -> bool:
    return has_role(user, OPERATORS, AUDITORS)


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


class MigrationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.pk = int(self.scope["url_route"]["kwargs"]["pk"])
        self.group = f"migration-{self.pk}"
        if not await _allowed(self.scope.get("user")):
            await self.close(code=4403)
            return
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


class MigrationListConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        if not await _allowed(self.scope.get("user")):
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(LIST_GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"type": "list", "migrations": await _active_list()})

    async def disconnect(self, code: int) -> None:
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


@database_sync_to_async
def _any_role(user) -> bool:
    return has_role(user)


class DirtyRateConsumer(AsyncJsonWebsocketConsumer):
    """Dirty-rate readings of one VM: stored history first, then live ones."""

    async def connect(self) -> None:
        if not await _any_role(self.scope.get("user")):
            await self.close(code=4403)
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
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dirtyrate_sample(self, event: dict) -> None:
        await self.send_json({"type": "sample", "sample": event["sample"]})

    async def dirtyrate_done(self, event: dict) -> None:
        await self.send_json({"type": "done", "series": event["series"], "count": event["count"]})
