"""How a script proves who it is: `Authorization: Bearer vmm_…` (or `Token
vmm_…`) with a token from the user's API tokens page. The browser's session
works too (with its CSRF check on writes)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from .models import ApiToken

SCHEMES = (b"bearer", b"token")


def token_from_header(header: bytes | str | None) -> str | None:
    """The token in an Authorization header value, or None when it holds none."""
    if not header:
        return None
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() not in SCHEMES:
        return None
    return parts[1].decode("latin-1")


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request)
        if not header:
            return None
        plain = token_from_header(header)
        if plain is None:
            if header.split()[0].lower() in SCHEMES:
                raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <token>'.")
            return None
        token = ApiToken.find(plain)
        if token is None:
            raise exceptions.AuthenticationFailed(
                "This API token is unknown, revoked or expired; create a new one on your API tokens page."
            )
        token.touch()
        return token.user, token

    def authenticate_header(self, request) -> str:
        return f'{self.keyword} realm="api"'


class TokenScheme(OpenApiAuthenticationExtension):
    """The token in the OpenAPI schema: a bearer token, for Swagger UI's Authorize button."""

    target_class = TokenAuthentication
    name = "token"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from your API tokens page (/account/tokens/), as `Authorization: Bearer vmm_…`.",
        }
