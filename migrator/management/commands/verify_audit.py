"""Verify the audit log: its keyed hash chain, then a signed anchor.

The chain, walked in insertion order: every event's stored hash must be the
HMAC of its content under the audit key, and link to the event before it.
The first broken link is named: an event whose content no longer matches its
hash (edited in place, or forged by a raw INSERT), or whose link does not
match the previous event's hash (an event before it removed, inserted or
re-hashed).

The anchor (by default the newest in AUDIT_ANCHOR_DIR for this database, or
`--anchor FILE`, `-` for standard input): its signature must verify, the
event it saw as the newest must still be there with the same hash, and the
log must still have as many events up to it. That catches the newest events
removed, or all of them. With no anchor this is said as a warning (exit 0),
unless `--require-anchor`.

Exit status 0 when everything holds, 1 with one plain sentence per failure;
the last line is a one-line summary.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from migrator.audit import anchor, chain, guard
from migrator.audit.verify import anchor_mismatch, first_broken_link

# An anchor older than this many intervals is reported: is the worker running?
STALE_INTERVALS = 3


class Command(BaseCommand):
    help = "Verify the audit log's keyed hash chain and its newest anchor; report the first broken link."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--anchor",
            metavar="FILE",
            help="check against this anchor ('-' reads it from standard input) instead of the newest "
            "one in AUDIT_ANCHOR_DIR",
        )
        parser.add_argument(
            "--require-anchor", action="store_true", help="fail when there is no anchor to check against"
        )

    def handle(self, *args, anchor: str | None = None, require_anchor: bool = False, **options) -> None:
        failures: list[str] = []
        count, broken = first_broken_link()
        if broken:
            failures.append(f"Audit chain broken after {count - 1} intact events. {broken}")
        else:
            self.stdout.write(f"Chain: {count} events, every hash and link intact ({chain.SCHEME}).")
        anchored = self._check_anchor(anchor, require_anchor, failures)
        triggers = guard.problems(connection)
        if triggers:
            self.stdout.write(
                f"Warning: the audit table's triggers are {'; '.join(triggers)}: raw UPDATE and DELETE "
                "are not refused (manage.py migrate puts them back)."
            )
        if failures:
            raise CommandError(" ".join(failures), returncode=1)
        self.stdout.write(f"{count} events, chain intact; {anchored}")

    def _check_anchor(self, option: str | None, required: bool, failures: list[str]) -> str:
        """Check one anchor; what the summary says of it."""
        if option:
            try:
                found = anchor.parse(sys.stdin.read()) if option == "-" else anchor.load(Path(option))
            except anchor.AnchorError as error:
                failures.append(str(error))
                return "anchor refused"
            here = anchor.database_label()
            if found.database != here:
                self.stdout.write(f"Warning: the anchor was taken of {found.database}; this is {here}.")
        else:
            path = anchor.newest_file()
            if path is None:
                return self._no_anchor(required, failures)
            try:
                found = anchor.load(path)
            except anchor.AnchorError as error:
                failures.append(str(error))
                return "anchor refused"
            self._warn_if_stale(found)
        mismatch = anchor_mismatch(found)
        if mismatch:
            failures.append(f"Anchor check failed: {mismatch}")
            return "anchor failed"
        source = found.path or "standard input"
        self.stdout.write(f"Anchor: {source}, taken {found.at}: {found.describe()}, all still in the log.")
        return f"anchor of {found.at} ({found.describe()}) holds"

    def _no_anchor(self, required: bool, failures: list[str]) -> str:
        folder = anchor.directory()
        others = anchor.other_anchor_files(folder)
        elsewhere = f" ({len(others)} there are of other databases)" if others else ""
        words = (
            f"no anchor of this database in {folder}{elsewhere}, so the newest events could have been deleted "
            f"unnoticed. `manage.py audit_anchor` writes one; a running worker writes one every "
            f"{settings.AUDIT_ANCHOR_INTERVAL_S} s."
        )
        if required:
            failures.append(f"No anchor to check (--require-anchor): {words}")
            return "no anchor"
        self.stdout.write(f"Warning: {words}")
        return "no anchor checked"

    def _warn_if_stale(self, found: anchor.Anchor) -> None:
        interval = timedelta(seconds=settings.AUDIT_ANCHOR_INTERVAL_S)
        age = datetime.now(UTC) - found.taken_at
        if age > STALE_INTERVALS * interval:
            minutes = int(age.total_seconds() // 60)
            self.stdout.write(
                f"Warning: the newest anchor is {minutes} min old (the worker writes one every "
                f"{settings.AUDIT_ANCHOR_INTERVAL_S} s: is it running?); events since then are covered by "
                "the chain alone."
            )
