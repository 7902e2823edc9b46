"""Websockets for scripts: the page's own sockets (/ws/migrations/<id>/,
/ws/migrations/, /ws/vms/<id>/dirty-rate/) accept an API token in the
`Authorization: Bearer <token>` header of the handshake. A socket opened
with a token is not a browser's, so the Origin check (which guards
cookie-authenticated sockets from other sites) does not apply to it; the
token is checked again with the role, and a revoked token closes it."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth.models import AnonymousUser

from .authentication import token_from_header
from .models import ApiToken


def _authorization(scope) -> bytes | None:
    return next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)


@database_sync_to_async
def _find(plain: str) -> ApiToken | None:
    token = ApiToken.find(plain)
    if token is not None:
        token.touch()
    return token


class TokenAuthMiddleware:
    """Inside AuthMiddlewareStack: a handshake with a token is that token's
    user (an unknown token is nobody, and the consumer refuses it)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        header = _authorization(scope)
        plain = token_from_header(header)
        if plain is not None:
            token = await _find(plain)
            scope = dict(scope, user=token.user if token else AnonymousUser(), api_token_pk=token.pk if token else None)
        return await self.inner(scope, receive, send)


def OriginUnlessToken(inner):  # noqa: N802  (an ASGI middleware factory, named like Channels' own)
    """Channels' Origin check for browsers; a handshake carrying a token skips it."""
    checked = AllowedHostsOriginValidator(inner)

    async def app(scope, receive, send):
        if token_from_header(_authorization(scope)) is not None:
            return await inner(scope, receive, send)
        return await checked(scope, receive, send)

    return app
