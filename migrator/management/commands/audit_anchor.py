"""Take a signed anchor of the audit log's head (count, newest event's id
and hash) and print it as one line of JSON.

By default it is also written into AUDIT_ANCHOR_DIR, where `verify_audit`
looks; `--stdout` only prints it, to ship to another system
(`manage.py audit_anchor --stdout | ssh logs 'cat >> vm-migrator-anchors'`),
from where `verify_audit --anchor FILE` checks against it later.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from migrator.audit import anchor


class Command(BaseCommand):
    help = "Write a signed anchor of the audit log's head into AUDIT_ANCHOR_DIR and print it."

    def add_arguments(self, parser) -> None:
        # call_command(stdout=…) is the output stream: call_command maps a
        # keyword to an option by the option's smallest name, here --print.
        parser.add_argument(
            "--stdout", "--print", action="store_true", dest="print_only", help="only print the anchor, write no file"
        )

    def handle(self, *args, print_only: bool = False, **options) -> None:
        taken = anchor.take()
        if not print_only:
            try:
                path = anchor.write(taken)
            except OSError as error:
                raise CommandError(
                    f"Cannot write the anchor into {anchor.directory()}: {error.strerror or error}.", returncode=1
                ) from None
            self.stderr.write(f"Wrote {path}")
        self.stdout.write(taken.to_json())
