"""`manage.py lab up [--register] [--no-guests] | down | status`: the three-host libvirt lab."""

from __future__ import annotations

import logging
import time

from django.core.management.base import BaseCommand, CommandError

from hosts.lab import HOSTS, Lab, LabError


class _StdoutHandler(logging.Handler):
    """Shows the lab's progress lines (one per step, with its time) as they happen."""

    def __init__(self, command: BaseCommand) -> None:
        super().__init__(logging.INFO)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        self.command.stdout.write("  " + record.getMessage())


class Command(BaseCommand):
    help = "Run three real libvirt hosts on this machine (the lab): up, down or status."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{up,down,status}")
        up = actions.add_parser("up", help="bring the lab up, or repair it (idempotent)")
        names = ", ".join(f"lab-{key.lower()}" for key in HOSTS)
        up.add_argument("--register", action="store_true", help=f"also create/update hosts {names}")
        up.add_argument("--no-guests", action="store_true", help="define the demo guests but do not start them")
        actions.add_parser("down", help="stop everything the lab started and remove its namespaces")
        actions.add_parser("status", help="show daemons, namespaces and guests")

    def handle(self, *args, action: str, **options) -> None:
        reason = Lab.cannot_run_reason()
        if reason:
            raise CommandError(f"cannot run the lab: {reason}")
        lab = Lab()
        handler = _StdoutHandler(self)
        logger = logging.getLogger("hosts.lab")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # else the project's root handler prints every line again
        start = time.monotonic()
        try:
            if action == "up":
                self.stdout.write(f"lab up ({lab.root}):")
                status = lab.up(start_guests=not options["no_guests"])
                if options["register"]:
                    hosts = lab.register()
                    self.stdout.write("  registered " + ", ".join(f"{h.name} ({h.uri})" for h in hosts))
                self.stdout.write(self.style.SUCCESS(f"lab up in {time.monotonic() - start:.1f} s"))
                self.stdout.write(status.describe())
            elif action == "down":
                self.stdout.write(f"lab down ({lab.root}):")
                lab.down()
                self.stdout.write(self.style.SUCCESS(f"lab down in {time.monotonic() - start:.1f} s"))
            else:
                self.stdout.write(lab.status().describe())
        except LabError as error:
            raise CommandError(str(error)) from error
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
