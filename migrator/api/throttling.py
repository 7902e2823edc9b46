"""Rate limits per token (per user for the browser's session), counted in
Redis so that every Daphne process and machine counts the same requests.
Reads and writes have their own budgets (API_RATE_READ, API_RATE_WRITE)."""

from __future__ import annotations

from django.core.cache import caches
from rest_framework import throttling

from .models import ApiToken


class _PerToken(throttling.SimpleRateThrottle):
    cache = caches["api"]
    safe: bool

    def get_cache_key(self, request, view):
        if (request.method in ("GET", "HEAD", "OPTIONS")) != self.safe:
            return None
        if isinstance(request.auth, ApiToken):
            ident = f"token-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ReadRate(_PerToken):
    scope = "read"
    safe = True


class WriteRate(_PerToken):
    scope = "write"
    safe = False
