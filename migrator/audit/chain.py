"""The audit chain's keys and seal: what an event's hash is.

An event's hash is an HMAC-SHA256, under a key kept out of the database, of
its canonical payload (its content and the previous event's hash). Whoever
can write the table but does not hold the key cannot re-hash an edited row,
nor the rows after it, nor forge a row of their own.

The key: `settings.AUDIT_KEY` when set, else `settings.SECRET_KEY`; either
way two keys are derived from it with Django's `salted_hmac` and fixed salts,
one that seals the chain and one that signs the anchors. Setting AUDIT_KEY
on its own lets SECRET_KEY change without breaking the chain; changing the
key the chain was sealed with makes every event fail verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

CHAIN_SALT = "vm-migrator.audit-chain"
ANCHOR_SALT = "vm-migrator.audit-anchor"
SCHEME = "hmac-sha256"


def _derive(salt: str) -> bytes:
    secret = settings.AUDIT_KEY or settings.SECRET_KEY
    if not secret:
        raise ImproperlyConfigured("The audit log needs AUDIT_KEY or SECRET_KEY to seal its chain.")
    return salted_hmac(salt, "key", secret=secret, algorithm="sha256").digest()


def chain_key() -> bytes:
    return _derive(CHAIN_SALT)


def anchor_key() -> bytes:
    return _derive(ANCHOR_SALT)


def key_setting() -> str:
    """Which setting the keys are derived from."""
    return "AUDIT_KEY" if settings.AUDIT_KEY else "SECRET_KEY"


def key_source() -> str:
    """The same, for messages."""
    return "AUDIT_KEY" if settings.AUDIT_KEY else "SECRET_KEY (AUDIT_KEY is not set)"


def canonical(
    *,
    at,
    actor_username: str,
    client_address: str | None,
    action: str,
    object_type: str,
    object_id: str,
    object_repr: str,
    details: Any,
    prev_hash: str,
) -> bytes:
    """The bytes an event's hash covers (the same payload as before the chain
    was keyed: only the hash function changed)."""
    payload = {
        "at": at.isoformat(),
        "actor": actor_username,
        "address": client_address,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "object_repr": object_repr,
        "details": details,
        "prev": prev_hash,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def row_canonical(row: Any, prev_hash: str | None = None) -> bytes:
    """`canonical` of a model instance (the live model or a migration's
    historical one), chained to `prev_hash` or to its own stored prev_hash."""
    return canonical(
        at=row.at,
        actor_username=row.actor_username,
        client_address=row.client_address,
        action=row.action,
        object_type=row.object_type,
        object_id=row.object_id,
        object_repr=row.object_repr,
        details=row.details,
        prev_hash=row.prev_hash if prev_hash is None else prev_hash,
    )


def seal(payload: bytes, key: bytes | None = None) -> str:
    return hmac.new(key if key is not None else chain_key(), payload, hashlib.sha256).hexdigest()


def legacy_sha256(payload: bytes) -> str:
    """The unkeyed hash events had before the chain was keyed (kept for the
    re-keying migration, which checks the old chain before re-sealing it)."""
    return hashlib.sha256(payload).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
