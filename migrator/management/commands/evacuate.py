"""Evacuate a host from the command line, through the same planner, batch
and audit as the host page's "Evacuate host" (migrator.fleet)."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from hosts.models import Host
from migrator import policies
from migrator.actions import Requester
from migrator.fleet import batches
from migrator.planning.evacuation import plan_evacuation

from ._users import acting_user


def print_plan(out, plan) -> None:
    out.write(f"{'order':>5}  {'vm':<20} {'to':<12} {'starts':>7} {'time s':>7} {'downtime ms':>11}")
    for i, step in enumerate(plan.steps, start=1):
        out.write(
            f"{i:>5}  {step.vm_name:<20} {step.destination_name:<12} {step.start_offset_s:>7.0f} "
            f"{step.predicted_s:>7.1f} {step.predicted_downtime_ms:>11.0f}"
        )
    for u in plan.unmovable:
        out.write(f"cannot move {u['vm_name']}: {'; '.join(u['reasons'])}")
    for note in plan.notes:
        out.write(f"note: {note}")
    out.write(f"predicted total {plan.predicted_total_s:.0f} s for {len(plan.steps)} VM(s)")


class Command(BaseCommand):
    help = (
        "Evacuate HOST: plan where each running VM goes (--dry-run prints the plan and changes nothing), "
        "then put the host in maintenance and migrate them under the limits. --leave ends maintenance."
    )

    def add_arguments(self, parser):
        parser.add_argument("host", help="the host's name, as on the Hosts page")
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument("--policy", default=policies.MINIMAL_DOWNTIME, choices=[v for v, _ in policies.CHOICES])
        parser.add_argument("--at", help="start at this time (YYYY-MM-DD HH:MM, server time); default now")
        parser.add_argument("--leave", action="store_true", help="leave maintenance instead")
        parser.add_argument("--user", help="who acts (recorded and audited); needed unless --dry-run")

    def handle(self, host: str, dry_run: bool, policy: str, at: str | None, leave: bool, user: str | None, **options):
        source = Host.objects.filter(name=host).first()
        if source is None:
            names = ", ".join(Host.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"No host named {host!r}; the hosts are: {names}.")
        if not dry_run and not user:
            raise CommandError("Say who acts: --user NAME (an operator), or --dry-run to only see the plan.")
        who = Requester(acting_user(user), "command line") if user else None
        if leave:
            left = batches.leave_maintenance(source, who)
            self.stdout.write(f"{source.name} {'left' if left else 'was not in'} maintenance.")
            return
        plan = plan_evacuation(source, policy=policy)
        print_plan(self.stdout, plan)
        if dry_run:
            self.stdout.write("dry run: nothing was changed")
            return
        try:
            batch = batches.start(source, plan, who, not_before=_when(at))
        except batches.BatchRefused as refusal:
            raise CommandError(str(refusal)) from refusal
        self.stdout.write(f"Started {batch}: {batch.migrations.count()} migration(s); follow it with manage.py queue.")


def _when(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise CommandError("Write --at as YYYY-MM-DD HH:MM (server time).") from None
    at = timezone.make_aware(at) if timezone.is_naive(at) else at
    if at <= timezone.now():
        raise CommandError("--at is in the past: give a later time, or leave it out to start now.")
    return at
