"""Re-sealing the audit chain under the HMAC key (migration audit.0002).

Events written before the chain was keyed carry a plain SHA-256 of the same
canonical payload. `rechain` first checks that old chain (a break is not
hidden: the event it records says where the old chain was broken), then
re-computes every event's prev_hash and hash under the key in insertion
order, and appends one `audit.rekeyed` event with the number of events and
the old head's hash, so the old chain stays comparable with copies of it
kept elsewhere.

It takes the model to work on, and writes through the model's base manager
(a plain one, also on the live model): a migration's historical model, or
the live one in a test with the table's triggers suspended.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from . import chain

BATCH = 2000


def _old_chain_break(row: Any, previous_hash: str, key: bytes) -> str | None:
    if row.prev_hash != previous_hash:
        return f"event {row.pk}'s prev_hash does not match the hash of the event before it"
    payload = chain.row_canonical(row)
    # An event already sealed with the key (new code that ran before the
    # migration) counts as intact: only the key's holder can write one.
    if chain.same(chain.legacy_sha256(payload), row.hash) or chain.same(chain.seal(payload, key), row.hash):
        return None
    return f"event {row.pk}'s content does not match its hash"


def rechain(model, now=None) -> Any | None:
    """Re-seal every event of `model` under the chain key; the `audit.rekeyed`
    event it appends (None for an empty log: nothing to re-seal)."""
    key = chain.chain_key()
    rows = model._base_manager.order_by("pk")
    count = 0
    broken: str | None = None
    broken_at: int | None = None
    old_previous = ""
    old_head: tuple[int, str] | None = None
    new_previous = ""
    last_pk = None
    while True:
        batch = list(rows.filter(pk__gt=last_pk)[:BATCH] if last_pk is not None else rows[:BATCH])
        if not batch:
            break
        for row in batch:
            count += 1
            if broken is None:
                broken = _old_chain_break(row, old_previous, key)
                broken_at = row.pk if broken else None
            old_previous = row.hash
            old_head = (row.pk, row.hash)
            new_hash = chain.seal(chain.row_canonical(row, new_previous), key)
            if (row.prev_hash, row.hash) != (new_previous, new_hash):
                model._base_manager.filter(pk=row.pk).update(prev_hash=new_previous, hash=new_hash)
            new_previous = new_hash
        last_pk = batch[-1].pk
    if old_head is None:
        return None
    details = {
        "events": count,
        "old_head_id": old_head[0],
        "old_head_hash": old_head[1],
        "old_scheme": "sha256",
        "scheme": chain.SCHEME,
        "key_from": chain.key_setting(),
        "pre_upgrade_chain": f"broken at event {broken_at}: {broken}" if broken else "intact",
        "pre_upgrade_broken_at": broken_at,
    }
    event = model(
        at=now or timezone.now(),
        actor_username="",
        client_address=None,
        action="audit.rekeyed",
        object_type="",
        object_id="",
        object_repr="audit log",
        details=details,
        prev_hash=new_previous,
    )
    event.hash = chain.seal(chain.row_canonical(event), key)
    # Model.save of the live model is append-only already; a historical one
    # is plain: both insert.
    event.save(force_insert=True)
    return event
