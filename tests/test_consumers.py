"""Websockets through the real Redis channel layer."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from migrator import live
from migrator.consumers import MigrationConsumer, MigrationListConsumer

from .test_migration_model import make_migration

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(consumer, path: str, user, **kwargs) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(consumer.as_asgi(), path)
    comm.scope["user"] = user
    comm.scope["url_route"] = {"kwargs": kwargs}
    return comm


SAMPLE = {
    "time_elapsed": 500,
    "memory_iteration": 1,
    "data_total": 1000,
    "data_processed": 250,
    "data_remaining": 750,
    "memory_bps": 2**20 * 40,
    "memory_dirty_rate": 256,
}


async def test_it_refuses_anonymous_and_wrong_role_sockets(users):
    m = await sync_to_async(make_migration)()
    for user in (AnonymousUser(), users["security"], users["outsider"]):
        comm = communicator(MigrationConsumer, f"/ws/migrations/{m.pk}/", user, pk=m.pk)
        connected, code = await comm.connect()
        assert not connected and code == 4403
        await comm.disconnect()


async def test_it_replays_history_then_forwards_live_samples(users):
    m = await sync_to_async(make_migration)()
    await sync_to_async(m.claim)(1, "h")
    await sync_to_async(m.progress)(SAMPLE)
    comm = communicator(MigrationConsumer, f"/ws/migrations/{m.pk}/", users["auditor"], pk=m.pk)
    connected, _ = await comm.connect()
    assert connected
    history = await comm.receive_json_from(timeout=5)
    assert history["type"] == "history"
    assert history["migration"]["state"] == "running"
    assert [s["data_processed_bytes"] for s in history["samples"]] == [250]

    later = dict(SAMPLE, time_elapsed=1000, data_processed=600, data_remaining=400)
    row = await sync_to_async(m.progress)(later)
    await sync_to_async(live.publish_sample)(m, row.as_dict())
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "sample" and message["sample"]["data_processed_bytes"] == 600

    await sync_to_async(m.finish)({"time_elapsed": 1200, "downtime": 50, "data_processed": 900})
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "state" and message["migration"]["state"] == "succeeded"
    assert message["migration"]["downtime_ms"] == 50
    await comm.disconnect()


async def test_it_lists_running_migrations_and_their_changes(users):
    running = await sync_to_async(make_migration)()
    await sync_to_async(running.claim)(1, "h")
    comm = communicator(MigrationListConsumer, "/ws/migrations/", users["operator"])
    connected, _ = await comm.connect()
    assert connected
    first = await comm.receive_json_from(timeout=5)
    assert first["type"] == "list" and [m["id"] for m in first["migrations"]] == [running.pk]
    # The transition publishes itself: nobody calls publish_state.
    await sync_to_async(running.fail)("boom", vm_location="a")
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "state" and message["migration"]["active"] is False
    await comm.disconnect()


async def test_it_closes_the_socket_of_an_unknown_migration(users):
    comm = communicator(MigrationConsumer, "/ws/migrations/999999/", users["operator"], pk=999999)
    connected, _ = await comm.connect()
    assert connected
    message = await comm.receive_json_from(timeout=5)
    assert message == {"type": "error", "message": "No such migration."}
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4404}
    await comm.disconnect()


async def test_it_keeps_a_quiet_socket_alive_past_the_layers_blocking_read(users):
    """channels-redis blocks 5 s per read; redis-py 8 turned that into a
    TimeoutError that killed every idle socket (redis is pinned below 8)."""
    m = await sync_to_async(make_migration)()
    comm = communicator(MigrationConsumer, f"/ws/migrations/{m.pk}/", users["operator"], pk=m.pk)
    connected, _ = await comm.connect()
    assert connected
    await comm.receive_json_from(timeout=5)
    await asyncio.sleep(7)
    await sync_to_async(live.publish_state)(m)
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "state"
    await comm.disconnect()
