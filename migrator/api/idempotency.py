"""Idempotent creates: a POST with an `Idempotency-Key` header is done once.
A retry with the same key and the same body gets the first answer again
(with `Idempotent-Replayed: true`), whichever web process or machine it
reaches: the key is claimed by a row in the database before the work runs.
The same key with another body, or while the first is still being served,
is refused. Only a success is remembered: a refused request may be sent
again, once fixed, with the same key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.response import Response

from .errors import refused
from .models import IdempotentRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200


def _body_digest(data) -> str:
    try:
        text = json.dumps(data, sort_keys=True, default=str)
    except TypeError:
        text = repr(sorted(data.items())) if hasattr(data, "items") else repr(data)
    return hashlib.sha256(text.encode()).hexdigest()


def once(request, endpoint: str, create: Callable[[], Response]) -> Response:
    """`create()`, or the answer an earlier request with the same key got."""
    key = request.headers.get(HEADER)
    if key is None:
        return create()
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        return refused(
            f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable characters (a UUID, say).",
            status.HTTP_400_BAD_REQUEST,
        )
    user = request.user
    digest = _body_digest(request.data)
    keep = timedelta(hours=settings.IDEMPOTENCY_KEEP_HOURS)
    IdempotentRequest.objects.filter(user=user, created_at__lt=timezone.now() - keep).delete()
    try:
        with transaction.atomic():
            claim = IdempotentRequest.objects.create(user=user, key=key, endpoint=endpoint, body_digest=digest)
    except IntegrityError:
        first = IdempotentRequest.objects.filter(user=user, key=key).first()
        if first is None:  # removed meanwhile (expired): try once more
            return once(request, endpoint, create)
        if first.endpoint != endpoint or first.body_digest != digest:
            return refused(
                f"This {HEADER} was already used for a different request; use a new key for a new request.",
                status.HTTP_422_UNPROCESSABLE_ENTITY,
            )
        if first.status_code is None:
            return refused(f"The first request with this {HEADER} is still being served; retry in a moment.")
        replay = Response(first.response, status=first.status_code)
        replay["Idempotent-Replayed"] = "true"
        return replay
    try:
        response = create()
    except Exception:
        # A crash is not an answer: the key is free for the retry.
        claim.delete()
        raise
    if response.status_code >= 300:
        # A refusal is not remembered: once its cause is fixed, the same
        # request with the same key is tried afresh.
        claim.delete()
    else:
        IdempotentRequest.objects.filter(pk=claim.pk).update(status_code=response.status_code, response=response.data)
    return response
