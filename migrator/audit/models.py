"""The audit log and the append-only rows it shares with the migration records.

This is the bottom layer: hosts and migrator both record here, so nothing in
it imports either app's models. Events name what they concern by label and
primary key, plus a snapshot of its name.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from . import chain

# The channel the events of the current request come through ("API"), when it
# is not the browser: each event recorded meanwhile carries it as "via".
_via: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_via", default=None)


@contextlib.contextmanager
def recorded_via(channel: str) -> Iterator[None]:
    """Every audit event recorded inside says `"via": channel` (unless it says its own)."""
    token = _via.set(channel)
    try:
        yield
    finally:
        _via.reset(token)


class AppendOnlyError(Exception):
    """Raised when code tries to rewrite or delete an append-only record."""


def _plural(model) -> str:
    return str(model._meta.verbose_name_plural).capitalize()


class NeverDeletedQuerySet(models.QuerySet):
    """Rows that are never deleted but may change through conditional
    updates (a migration record's state transitions)."""

    def delete(self):
        raise AppendOnlyError(f"{_plural(self.model)} are never deleted.")


class AppendOnlyQuerySet(NeverDeletedQuerySet):
    """Rows inserted one at a time through their model's save, then never
    changed nor deleted: the bulk paths, which skip the model's save, are
    refused too (their async twins call these). For the audit log the
    database backs this up with triggers that refuse UPDATE, DELETE and
    TRUNCATE (`migrator.audit.guard`)."""

    def _refuse(self, what: str):
        raise AppendOnlyError(f"{_plural(self.model)} are append-only: {what} is refused.")

    def update(self, **kwargs: Any):
        self._refuse("update()")

    def _update(self, values):
        self._refuse("update()")

    def bulk_update(self, objs, fields, batch_size=None):
        self._refuse("bulk_update()")

    def bulk_create(self, objs, *args: Any, **kwargs: Any):
        self._refuse("bulk_create()")


class AppendOnlyModel(models.Model):
    """A row is saved once, as an insert, and never deleted through the ORM.
    Its manager says what may follow: AppendOnlyQuerySet, nothing (the audit
    log); NeverDeletedQuerySet, conditional updates (a migration record's
    state transitions)."""

    changed_message = "{plural} are never changed."

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(self.changed_message.format(plural=_plural(self)))
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any):
        raise AppendOnlyError(f"{_plural(self)} are never deleted.")


class AuditEvent(AppendOnlyModel):
    """Append-only log of who did what. Each row's hash is an HMAC, under a
    key kept out of the database (`migrator.audit.chain`), of its content and
    the previous row's hash: an edit made directly in the database breaks the
    chain at that row, and cannot be re-hashed without the key. Signed
    anchors kept outside the database (`migrator.audit.anchor`) catch the
    newest rows removed (`python manage.py verify_audit`)."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_username = models.CharField(max_length=150, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        # The table the migrator app created: the model moved, its rows did not.
        db_table = "migrator_auditevent"
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_username or '-'} {self.action} {self.object_repr}"

    def compute_hash(self) -> str:
        """The HMAC-SHA256 of the event's canonical payload under the chain key."""
        return chain.seal(chain.row_canonical(self))

    @classmethod
    def record(
        cls,
        action: str,
        *,
        actor=None,
        obj: models.Model | None = None,
        details: dict | None = None,
        client_address: str | None = None,
        object_repr: str = "",
    ) -> AuditEvent:
        via = _via.get()
        if via and "via" not in (details or {}):
            details = {**(details or {}), "via": via}
        with transaction.atomic():
            _lock_audit_chain()
            previous = cls.objects.order_by("-pk").values_list("hash", flat=True).first() or ""
            event = cls(
                actor=actor if getattr(actor, "pk", None) else None,
                actor_username=getattr(actor, "username", "") or "",
                # Hashed as the database will return it (IPv6 in canonical form).
                client_address=_canonical_address(client_address),
                action=action,
                object_type=obj._meta.label_lower if obj is not None else "",
                object_id=str(obj.pk) if obj is not None else "",
                object_repr=(object_repr or (str(obj) if obj is not None else ""))[:255],
                details=_stable_json(json.loads(json.dumps(details or {}, default=str))),
                prev_hash=previous,
            )
            event.hash = event.compute_hash()
            event.save()
            return event


def _stable_json(value: Any) -> Any:
    """JSON as every database hands it back, so the hash still verifies after
    a round trip: PostgreSQL's jsonb returns 1e+20 as 100000000000000000000
    and -0.0 as 0.0, and refuses NaN and NUL characters."""
    if isinstance(value, dict):
        return {key: _stable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stable_json(item) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1e16:
            return int(value)
        return value + 0.0  # -0.0 → 0.0
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    return value


def _canonical_address(address: str | None) -> str | None:
    return clean_ipv6_address(address) if address and ":" in address else address


def _lock_audit_chain() -> None:
    """Serialise appends so two events never chain to the same predecessor."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(7401)")
