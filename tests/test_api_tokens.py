"""API tokens from the tokens page to a refused script: shown once, stored
as a digest, used, expired and revoked (audited); rate limits; websockets
opened with a token through the real ASGI application; the OpenAPI schema
and its docs, served without a CDN."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.utils import timezone

from migrator.api import throttling
from migrator.api.models import ApiToken, digest
from migrator.audit.models import AuditEvent

from .api_helpers import anonymous, token_client
from .test_migration_model import make_migration

pytestmark = pytest.mark.django_db


def bearer(client_or_plain) -> dict[str, str]:
    plain = getattr(client_or_plain, "token", client_or_plain)
    return {"HTTP_AUTHORIZATION": f"Bearer {plain}"}


# ------------------------------------------------------------------ the tokens page


def test_the_page_shows_a_new_token_once_and_keeps_only_its_digest(client, users):
    client.force_login(users["operator"])
    page = client.post("/account/tokens/", {"name": "nightly script", "expires_in_days": "30"})
    assert page.status_code == 200
    plain = page.context["created"]
    assert plain.startswith("vmm_") and plain in page.content.decode()
    token = ApiToken.objects.get()
    assert token.user == users["operator"] and token.name == "nightly script"
    assert token.digest == digest(plain) and plain not in (token.lookup, token.digest)
    assert abs((token.expires_at - timezone.now()) - dt.timedelta(days=30)) < dt.timedelta(minutes=1)
    again = client.get("/account/tokens/")
    assert plain not in again.content.decode() and "nightly script" in again.content.decode()
    event = AuditEvent.objects.get(action="api_token.created")
    assert event.actor == users["operator"] and event.details["name"] == "nightly script"


def test_the_page_refuses_a_nameless_or_endless_token_in_plain_words(client, users):
    client.force_login(users["auditor"])
    page = client.post("/account/tokens/", {"name": "", "expires_in_days": "99999"})
    errors = page.context["form"].errors
    assert errors["name"] == ["Name the token, so you know later what uses it."]
    assert "at most 3650 days" in errors["expires_in_days"][0]
    assert not ApiToken.objects.exists()


def test_the_page_needs_a_role(client, users):
    client.force_login(users["outsider"])
    assert client.get("/account/tokens/").status_code == 403
    assert anonymous().get("/account/tokens/").status_code == 302  # to the login page


def test_a_token_acts_as_its_user_and_records_its_last_use(users):
    client = token_client(users["auditor"])
    token = ApiToken.objects.get()
    assert token.last_used_at is None
    assert client.get("/api/v1/migrations/").status_code == 200
    token.refresh_from_db()
    first_use = token.last_used_at
    assert first_use is not None
    assert client.get("/api/v1/migrations/").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at == first_use  # one write a minute, not one per request
    assert client.post("/api/v1/migrations/", {}, format="json").status_code == 403  # an auditor's roles


def test_a_revoked_token_is_refused_with_the_way_out(client, users):
    api = token_client(users["operator"])
    token = ApiToken.objects.get()
    client.force_login(users["operator"])
    response = client.post(f"/account/tokens/{token.pk}/revoke/", follow=True)
    assert "is revoked" in response.content.decode()
    refused = api.get("/api/v1/migrations/")
    assert refused.status_code == 401
    assert refused.json() == {
        "detail": "This API token is unknown, revoked or expired; create a new one on your API tokens page."
    }
    assert refused["WWW-Authenticate"] == 'Bearer realm="api"'
    assert AuditEvent.objects.filter(action="api_token.revoked").count() == 1
    client.post(f"/account/tokens/{token.pk}/revoke/")
    assert AuditEvent.objects.filter(action="api_token.revoked").count() == 1


def test_nobody_revokes_another_users_token(client, users):
    token_client(users["operator"])
    token = ApiToken.objects.get()
    client.force_login(users["auditor"])
    assert client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    assert client.get("/account/tokens/").context["tokens"].count() == 0
    token.refresh_from_db()
    assert token.state == "active"


def test_an_expired_token_or_an_inactive_users_token_is_refused(users):
    expired = token_client(users["operator"])
    ApiToken.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert expired.get("/api/v1/migrations/").status_code == 401
    assert ApiToken.objects.get().state == "expired"

    live = token_client(users["auditor"])
    assert live.get("/api/v1/migrations/").status_code == 200
    users["auditor"].is_active = False
    users["auditor"].save()
    assert live.get("/api/v1/migrations/").status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer vmm_" + "x" * 40, "Token nonsense", "Bearer " + "vmm_" + "y" * 400],
)
def test_malformed_or_unknown_tokens_are_plain_401s(header):
    response = anonymous().get("/api/v1/migrations/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert set(response.json()) == {"detail"}


def test_an_unrelated_authorization_scheme_is_simply_not_signed_in():
    response = anonymous().get("/api/v1/migrations/", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert response.status_code == 401
    assert "credentials were not provided" in response.json()["detail"]


def test_the_browsers_session_works_and_keeps_its_csrf_check(users):
    from rest_framework.test import APIClient

    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(users["operator"])
    assert browser.get("/api/v1/migrations/").status_code == 200
    response = browser.post("/api/v1/migrations/", {"vm": 1, "destination": 2}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


# ------------------------------------------------------------------ rate limits


def test_reads_and_writes_have_their_own_budget_and_say_when_to_retry(users, monkeypatch):
    monkeypatch.setattr(throttling.ReadRate, "THROTTLE_RATES", {"read": "3/min", "write": "2/min"})
    monkeypatch.setattr(throttling.WriteRate, "THROTTLE_RATES", {"read": "3/min", "write": "2/min"})
    client = token_client(users["operator"])
    for _ in range(3):
        assert client.get("/api/v1/migrations/").status_code == 200
    limited = client.get("/api/v1/migrations/")
    assert limited.status_code == 429
    body = limited.json()
    assert "throttled" in body["detail"].lower() and 0 < body["retry_after_s"] <= 60
    assert int(limited["Retry-After"]) > 0
    # Writes count apart from reads.
    assert client.post("/api/v1/prechecks/", {}, format="json").status_code == 400
    assert client.post("/api/v1/prechecks/", {}, format="json").status_code == 400
    assert client.post("/api/v1/prechecks/", {}, format="json").status_code == 429
    # Another token (another user) has its own budget.
    assert token_client(users["auditor"]).get("/api/v1/migrations/").status_code == 200


# ------------------------------------------------------------------ websockets with a token


def asgi_socket(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    from migrator.asgi import application

    return WebsocketCommunicator(application, path, headers=headers)


@pytest.mark.django_db(transaction=True)
async def test_a_script_watches_a_migration_with_its_token_and_no_origin(users):
    m = await sync_to_async(make_migration)()
    _, plain = await sync_to_async(ApiToken.issue)(users["auditor"], "watcher")
    comm = asgi_socket(f"/ws/migrations/{m.pk}/", [(b"authorization", f"Bearer {plain}".encode())])
    connected, _ = await comm.connect(timeout=10)
    assert connected
    history = await comm.receive_json_from(timeout=10)
    assert history["type"] == "history" and history["migration"]["id"] == m.pk
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_with_a_bad_token_or_wrong_role_is_refused(users):
    m = await sync_to_async(make_migration)()
    for header in (b"Bearer vmm_" + b"z" * 40, None):
        headers = [(b"authorization", header)] if header else []
        if header is None:
            _, plain = await sync_to_async(ApiToken.issue)(users["security"], "wrong role")
            headers = [(b"authorization", f"Bearer {plain}".encode())]
        comm = asgi_socket(f"/ws/migrations/{m.pk}/", headers)
        connected, code = await comm.connect(timeout=10)
        assert not connected and code == 4403
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_cookie_socket_from_another_site_is_still_refused():
    comm = asgi_socket("/ws/migrations/", [(b"origin", b"https://evil.example")])
    connected, _ = await comm.connect(timeout=10)
    assert not connected
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_revoking_the_token_closes_its_open_socket(users):
    from migrator.consumers import recheck_sockets

    m = await sync_to_async(make_migration)()
    token, plain = await sync_to_async(ApiToken.issue)(users["operator"], "watcher")
    comm = asgi_socket(f"/ws/migrations/{m.pk}/", [(b"authorization", f"Bearer {plain}".encode())])
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.receive_json_from(timeout=10)  # the history
    await sync_to_async(token.revoke)()
    await sync_to_async(recheck_sockets)(users["operator"].pk)
    message = await comm.receive_json_from(timeout=10)
    assert message["type"] == "revoked"
    closed = await comm.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4403}


# ------------------------------------------------------------------ the schema and its docs


def test_the_openapi_schema_is_valid_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for route in ("/api/v1/migrations/", "/api/v1/prechecks/", "/api/v1/hosts/{id}/evacuation-plan/"):
        assert route in text


def test_the_schema_and_its_docs_are_served_from_the_project(users):
    client = token_client(users["auditor"])
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200 and schema.json()["info"]["title"]
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn." not in html and "unpkg" not in html
    assert "/static/drf_spectacular_sidecar/" in html
