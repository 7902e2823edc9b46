"""Checking the audit log: its keyed chain, then an anchor kept outside it.

The chain (walked in insertion order) shows an event edited (its HMAC no
longer matches its content) and an event removed, inserted or re-hashed
before the newest (a link that does not match the previous hash). The
anchor shows what the chain cannot: the newest events removed, or all of
them.
"""

from __future__ import annotations

from . import chain
from .anchor import Anchor
from .models import AuditEvent


def first_broken_link() -> tuple[int, str | None]:
    """(events checked, description of the first broken link or None)."""
    key = chain.chain_key()
    previous_hash = ""
    previous_id = None
    count = 0
    for event in AuditEvent.objects.order_by("pk").iterator(chunk_size=2000):
        count += 1
        if event.prev_hash != previous_hash:
            where = f"event {previous_id}'s hash {previous_hash}" if previous_id else "empty (first event)"
            return count, (
                f"Event {event.pk} ({event.action}, {event.at.isoformat()}): prev_hash {event.prev_hash or '(empty)'} "
                f"does not match the previous hash, expected {where}."
            )
        recomputed = chain.seal(chain.row_canonical(event), key)
        if not chain.same(recomputed, event.hash):
            hint = (
                f" If every event fails like this, the key changed: it comes from {chain.key_source()}."
                if count == 1
                else ""
            )
            return count, (
                f"Event {event.pk} ({event.action}, {event.at.isoformat()}): content altered or forged, "
                f"recomputed hash {recomputed} differs from stored hash {event.hash}.{hint}"
            )
        previous_hash, previous_id = event.hash, event.pk
    return count, None


def anchor_mismatch(anchor: Anchor) -> str | None:
    """How the log no longer matches the anchor, or None when it does."""
    if anchor.count == 0 or anchor.head_id is None:
        return None
    when = f"the anchor of {anchor.at}"
    last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
    head_hash = AuditEvent.objects.filter(pk=anchor.head_id).values_list("hash", flat=True).first()
    if head_hash is None:
        if last is None:
            return (
                f"The log is empty but {when} saw {anchor.count} events up to event {anchor.head_id}: "
                "every event was deleted."
            )
        if last < anchor.head_id:
            return (
                f"The log ends at event {last} but {when} saw {anchor.count} events up to event "
                f"{anchor.head_id}: the newest events were deleted."
            )
        return (
            f"Event {anchor.head_id}, the newest of the {anchor.count} events {when} saw, is no longer in "
            f"the log (which now ends at event {last}): events were deleted."
        )
    if not chain.same(head_hash, anchor.head_hash):
        return (
            f"Event {anchor.head_id}'s hash {head_hash} is not the {anchor.head_hash} {when} saw: "
            "the log was re-written."
        )
    now = AuditEvent.objects.filter(pk__lte=anchor.head_id).count()
    if now != anchor.count:
        verb = "deleted" if now < anchor.count else "inserted"
        return (
            f"The log has {now} events up to event {anchor.head_id} but {when} saw {anchor.count}: "
            f"events were {verb} before it."
        )
    return None
