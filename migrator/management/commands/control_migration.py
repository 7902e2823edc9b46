"""Act on a migration from the command line, through the same checks, audit
and worker hand-over as the live page's buttons (migrator.actions)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from migrator import actions
from migrator.models import Migration

from ._users import acting_user

ACTIONS = {
    "bandwidth": "set the bandwidth limit (MiB/s) while it runs (virsh migrate-setspeed)",
    "max-downtime": "set the max downtime (ms) while it runs (virsh migrate-setmaxdowntime)",
    "postcopy": "switch to post-copy now (started with post-copy allowed)",
    "force-complete": "pause the VM so the last pass finishes; it resumes on the destination",
    "cancel": "cancel (queued) or abort (running, pre-copy)",
    "resume": "resume an interrupted post-copy",
    "settle": "superusers: settle a record by hand (--state, --location, --reason)",
}


class Command(BaseCommand):
    help = "Act on a migration: control_migration ID ACTION [VALUE] --user NAME. Actions: " + "; ".join(
        f"{name}: {words}" for name, words in ACTIONS.items()
    )

    def add_arguments(self, parser):
        parser.add_argument("migration", type=int, help="the migration's number (#ID)")
        parser.add_argument("action", choices=list(ACTIONS))
        parser.add_argument("value", nargs="?", type=int, help="MiB/s for bandwidth, ms for max-downtime")
        parser.add_argument("--user", required=True, help="who acts (recorded and audited)")
        parser.add_argument("--state", choices=list(actions.SETTLE_STATES), help="settle: the final state")
        parser.add_argument("--location", default="", help="settle: where the VM runs now")
        parser.add_argument("--reason", default="", help="settle: what you checked")

    def handle(self, migration: int, action: str, value: int | None, user: str, **options):
        record = Migration.objects.filter(pk=migration).first()
        if record is None:
            raise CommandError(f"No migration #{migration}.")
        who = actions.Requester(acting_user(user, superuser=action == "settle"), "command line")
        try:
            if action in ("bandwidth", "max-downtime"):
                if value is None:
                    unit = "MiB/s" if action == "bandwidth" else "ms"
                    raise CommandError(f"Give the new value in {unit}: control_migration {migration} {action} VALUE.")
                asked = actions.request_action(record, action.replace("-", "_"), value, who)
                self.stdout.write(f"Asked: {asked.label}. The worker applies it within a second.")
            elif action in ("postcopy", "force-complete"):
                asked = actions.request_action(record, action.replace("-", "_"), None, who)
                self.stdout.write(f"Asked: {asked.label}. The worker applies it within a second.")
            elif action == "cancel":
                self.stdout.write(actions.request_cancel(record, who))
            elif action == "resume":
                actions.request_resume(record, who)
                self.stdout.write("Resuming post-copy: a worker takes it up now.")
            else:
                if not options["state"]:
                    raise CommandError("settle needs --state (succeeded, failed or cancelled).")
                actions.settle_by_hand(record, options["state"], options["location"], options["reason"], who)
                self.stdout.write(f"Migration #{migration} settled by hand as {options['state']}.")
        except actions.ActionRefused as refusal:
            raise CommandError(str(refusal)) from refusal
