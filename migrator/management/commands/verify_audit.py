"""Walk the audit log in insertion order and check its hash chain.

Exit status 0 and "N events, chain intact" when every event's stored hash
matches its content and links to the event before it; otherwise exit status 1
and the first broken link: which event, and whether its content no longer
matches its hash (edited in place) or its link does not match the previous
event's hash (an event before it removed, inserted or re-hashed).
Removing the newest events leaves no trace in the chain itself; compare the
count and the last hash with a copy kept elsewhere to catch that.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from migrator.audit.models import AuditEvent


def first_broken_link() -> tuple[int, str | None]:
    """(events checked, description of the first broken link or None)."""
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
        recomputed = event.compute_hash()
        if recomputed != event.hash:
            return count, (
                f"Event {event.pk} ({event.action}, {event.at.isoformat()}): content altered, "
                f"recomputed hash {recomputed} differs from stored hash {event.hash}."
            )
        previous_hash, previous_id = event.hash, event.pk
    return count, None


class Command(BaseCommand):
    help = "Verify the audit log's hash chain and report the first broken link."

    def handle(self, *args, **options) -> None:
        count, broken = first_broken_link()
        if broken:
            raise CommandError(f"Audit chain broken after {count - 1} intact events. {broken}", returncode=1)
        self.stdout.write(f"{count} events, chain intact")
