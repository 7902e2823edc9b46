"""API test helpers: a DRF client that sends a real token of the user."""

from __future__ import annotations

from rest_framework.test import APIClient

from migrator.models import ApiToken


def token_client(user, name: str = "tests") -> APIClient:
    """An API client authenticated as `user` with a freshly issued token."""
    _, plain = ApiToken.issue(user, name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    client.token = plain
    return client


def anonymous() -> APIClient:
    return APIClient()
