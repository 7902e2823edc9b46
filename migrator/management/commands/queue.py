"""The migration queue from the command line: what runs, what waits and why,
each host's slots; --cancel drops a waiting migration (audited)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from migrator import actions
from migrator.fleet import slots
from migrator.models import SLOT_STATES, Migration

from ._users import acting_user


class Command(BaseCommand):
    help = "Show the migration queue (running, waiting with position and reason, slots per host)."

    def add_arguments(self, parser):
        parser.add_argument("--cancel", type=int, metavar="ID", help="cancel this waiting or queued migration")
        parser.add_argument("--user", help="who cancels (recorded and audited)")

    def handle(self, cancel: int | None, user: str | None, **options):
        if cancel is not None:
            record = Migration.objects.filter(pk=cancel).first()
            if record is None:
                raise CommandError(f"No migration #{cancel}.")
            if not user:
                raise CommandError("Say who cancels: --user NAME (an operator).")
            try:
                self.stdout.write(actions.request_cancel(record, actions.Requester(acting_user(user), "command line")))
            except actions.ActionRefused as refusal:
                raise CommandError(str(refusal)) from refusal
            return
        running = Migration.objects.filter(state__in=SLOT_STATES).order_by("created_at")
        self.stdout.write(f"running ({running.count()}):")
        for m in running:
            self.stdout.write(f"  #{m.pk} {m.vm_name}: {m.source_name} → {m.destination_name}, {m.state}")
        queue = slots.waiting_queue()
        self.stdout.write(f"waiting ({len(queue)}):")
        for entry in queue:
            m = entry.migration
            self.stdout.write(
                f"  {entry.position}. #{m.pk} {m.vm_name}: {m.source_name} → {m.destination_name}: "
                f"{m.wait_reason or 'a free slot'}"
            )
        self.stdout.write("slots:")
        for name, use in slots.occupancy().items():
            sends = f"sends {use['sending']}/{use['max_outgoing']}"
            self.stdout.write(f"  {name}: {sends}, receives {use['receiving']}/{use['max_incoming']}")
