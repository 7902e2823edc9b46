"""A script's whole session on the lab, with a real worker: it checks and
starts a migration through the API, watches it on a websocket opened with
its token, waits for the end with `?wait=`, brings the VM back, and finds
both migrations counted on /metrics with their duration and downtime."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from hosts import inventory
from migrator.models import FINAL_STATES, Migration

from .api_helpers import anonymous, token_client

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

GUEST = "web-shared"


def start(client, vm_pk: int, destination: str, key: str, bandwidth_mib_s: int) -> dict:
    body = {"vm": vm_pk, "destination": destination, "bandwidth_mib_s": bandwidth_mib_s}
    check = client.post("/api/v1/prechecks/", body, format="json")
    assert check.status_code == 200 and check.json()["ok"], check.json()
    response = client.post("/api/v1/migrations/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 201, response.json()
    retried = client.post("/api/v1/migrations/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert retried.json()["id"] == response.json()["id"] and retried["Idempotent-Replayed"] == "true"
    return response.json()


def wait_for_end(client, created: dict, timeout_s: float = 300) -> tuple[dict, list[str]]:
    """Long-poll the migration from the state it was created in until it
    ends: its body and the states seen."""
    pk, states = created["id"], [created["state"]]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/migrations/{pk}/?wait=20&state={states[-1]}&samples=0").json()
        if states[-1] != body["state"]:
            states.append(body["state"])
        if body["state"] in FINAL_STATES:
            return client.get(f"/api/v1/migrations/{pk}/").json(), states
    raise AssertionError(f"migration {pk} still {states[-1]} after {timeout_s} s")


def watch_socket(token: str, pk: int, timeout_s: float = 300) -> list[dict]:
    """Every message of the migration's websocket, opened with the token and
    no Origin, until it reports the end."""

    async def run() -> list[dict]:
        from migrator.asgi import application

        comm = WebsocketCommunicator(
            application, f"/ws/migrations/{pk}/", headers=[(b"authorization", f"Bearer {token}".encode())]
        )
        connected, code = await comm.connect(timeout=10)
        assert connected, code
        messages: list[dict] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while loop.time() < deadline:
                message = await comm.receive_json_from(timeout=deadline - loop.time())
                messages.append(message)
                if (message.get("migration") or {}).get("state") in FINAL_STATES:
                    return messages
        finally:
            await comm.disconnect()
        raise AssertionError(f"the socket did not report the end: {messages[-3:]}")

    return async_to_sync(run)()


def test_a_script_migrates_a_vm_there_and_back_and_finds_it_on_metrics(lab, lab_hosts, guest, real_workers, users):
    a, b = lab_hosts
    guest(GUEST)
    real_workers(processes=1)
    client = token_client(users["operator"])
    vm = client.get(f"/api/v1/vms/?host={a.pk}&q={GUEST}").json()["results"][0]

    there = start(client, vm["id"], "lab-b", "there", 64)
    messages = watch_socket(client.token, there["id"])
    assert messages[0]["type"] == "history"
    ended, _ = wait_for_end(client, there)
    assert ended["state"] == "succeeded", ended
    assert ended["total_time_ms"] > 0 and ended["downtime_ms"] is not None
    assert ended["samples"], "job statistics were sampled"
    assert any(m["type"] == "sample" for m in messages) or len(ended["samples"]) <= 2
    lab.wait_tick(GUEST, "B")

    inventory.refresh_host(b)
    vm_on_b = client.get(f"/api/v1/vms/?host=lab-b&q={GUEST}").json()["results"][0]
    # Slower, so that the long-poll sees it run.
    back = start(client, vm_on_b["id"], "lab-a", "back", 16)
    ended_back, states = wait_for_end(client, back)
    assert ended_back["state"] == "succeeded", ended_back
    assert states[0] in ("queued", "waiting") and states[-2:] == ["running", "succeeded"], states
    assert lab.where(GUEST) == "A"
    lab.wait_tick(GUEST, "A")

    assert anonymous().get("/metrics").status_code == 401
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.content.decode()
    assert int(float(re.search(r'^vm_migrator_migrations_total\{outcome="succeeded"\} (\S+)$', text, re.M)[1])) == 2
    assert re.search(r"^vm_migrator_migration_duration_seconds_count (\S+)$", text, re.M)[1] in ("2", "2.0")
    assert re.search(r"^vm_migrator_migration_downtime_seconds_count (\S+)$", text, re.M)[1] in ("2", "2.0")
    assert Migration.objects.filter(state="succeeded").count() == 2
