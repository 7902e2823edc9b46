"""API tokens and the idempotency keys of creates."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "vmm_"
# Only the first characters are stored in the clear, to find the row; the
# rest is a SHA-256 digest. A token is 32 random bytes: a fast hash is enough
# (there is nothing to guess), unlike a password.
LOOKUP_CHARS = 12


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def usable(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    """A user's token for scripts. The token itself is shown once, when it is
    created; the database keeps its first characters and a digest."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    lookup = models.CharField(max_length=LOOKUP_CHARS, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.lookup}…)"

    @classmethod
    def issue(cls, user, name: str, expires_at=None) -> tuple[ApiToken, str]:
        """A new token for the user: the row, and the token to show once."""
        while True:
            plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
            lookup = plain[:LOOKUP_CHARS]
            if not cls.objects.filter(lookup=lookup).exists():
                break
        token = cls.objects.create(user=user, name=name, lookup=lookup, digest=digest(plain), expires_at=expires_at)
        return token, plain

    @classmethod
    def find(cls, plain: str) -> ApiToken | None:
        """The usable token this string is, or None."""
        if not plain.startswith(TOKEN_PREFIX) or len(plain) > 200:
            return None
        token = cls.objects.usable().select_related("user").filter(lookup=plain[:LOOKUP_CHARS]).first()
        if token is None or not secrets.compare_digest(token.digest, digest(plain)):
            return None
        return token

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def touch(self) -> None:
        """Record a use; at most one write a minute per token."""
        now = timezone.now()
        if self.last_used_at is None or (now - self.last_used_at).total_seconds() >= 60:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    def revoke(self) -> bool:
        return ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1


class IdempotentRequest(models.Model):
    """A create sent with an Idempotency-Key header, and the answer it got: a
    retry with the same key and body gets the same answer, not a second
    migration. Kept IDEMPOTENCY_KEEP_HOURS."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=200)
    body_digest = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True)
    response = models.JSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="one_request_per_idempotency_key")]
