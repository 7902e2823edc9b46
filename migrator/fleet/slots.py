"""The migration queue's slots: how many migrations may run out of a host,
into a host and over the whole site, and which waiting migrations may start.

Every decision is taken in the database, under QueueLock, so any number of
RQ workers on any number of machines respect the limits; no process keeps a
scheduler of its own. A migration holds a slot from the moment it is queued
for a worker until it leaves the worker's hands (SLOT_STATES).

Waiting migrations start first-come, first-served. One that cannot start
keeps the slots it would take free for itself: a later migration that needs
the same source or destination waits behind it, one that needs neither may
go ahead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from hosts.models import Host

from ..models import SLOT_STATES, Migration, MigrationState
from .models import QueueLock


@dataclass(frozen=True)
class Limits:
    outgoing: dict[str, int]
    incoming: dict[str, int]
    total: int

    @classmethod
    def now(cls) -> Limits:
        hosts = list(Host.objects.only("name", "max_outgoing", "max_incoming"))
        return cls(
            outgoing={h.name: h.outgoing_limit for h in hosts},
            incoming={h.name: h.incoming_limit for h in hosts},
            total=settings.MIGRATION_MAX_TOTAL,
        )

    def out_of(self, host: str) -> int:
        return self.outgoing.get(host, settings.MIGRATION_MAX_OUTGOING)

    def into(self, host: str) -> int:
        return self.incoming.get(host, settings.MIGRATION_MAX_INCOMING)


@dataclass
class Usage:
    """Slots taken (by queued and running migrations) and kept (for earlier
    waiting ones), per source, per destination and in all."""

    sending: Counter
    receiving: Counter
    total: int
    kept_out: Counter
    kept_in: Counter

    @classmethod
    def now(cls) -> Usage:
        held = list(Migration.objects.filter(state__in=SLOT_STATES).values_list("source_name", "destination_name"))
        return cls(
            sending=Counter(s for s, _ in held),
            receiving=Counter(d for _, d in held),
            total=len(held),
            kept_out=Counter(),
            kept_in=Counter(),
        )

    def why_not(self, m: Migration, limits: Limits, maintenance: set[str]) -> str:
        """Why `m` cannot start now, in plain words; empty when it can."""
        if m.destination_name in maintenance:
            return f"{m.destination_name} is in maintenance: it starts when the host leaves maintenance."
        if self.total >= limits.total:
            return f"The site already runs {self.total} migrations (limit {limits.total})."
        src, dst = m.source_name, m.destination_name
        if self.sending[src] + self.kept_out[src] >= limits.out_of(src):
            return _busy(src, "sends", self.sending[src], self.kept_out[src], limits.out_of(src))
        if self.receiving[dst] + self.kept_in[dst] >= limits.into(dst):
            return _busy(dst, "receives", self.receiving[dst], self.kept_in[dst], limits.into(dst))
        return ""

    def take(self, m: Migration) -> None:
        self.sending[m.source_name] += 1
        self.receiving[m.destination_name] += 1
        self.total += 1

    def keep(self, m: Migration) -> None:
        self.kept_out[m.source_name] += 1
        self.kept_in[m.destination_name] += 1


def _busy(host: str, verb: str, taken: int, kept: int, limit: int) -> str:
    if kept:
        return f"{host} {verb} {taken} and {kept} earlier waiting migration(s) go first (limit {limit})."
    return f"{host} already {verb} {taken} (limit {limit})."


def _scheduled(at: datetime) -> str:
    return f"Scheduled to start at {timezone.localtime(at):%Y-%m-%d %H:%M %Z}."


def _take_lock() -> None:
    """Serialise dispatchers until this transaction ends (see QueueLock)."""
    while not QueueLock.objects.filter(pk=1).update(turns=F("turns") + 1):
        try:
            with transaction.atomic():
                QueueLock.objects.create(pk=1)
        except IntegrityError:
            continue  # another dispatcher created it first: take it by update


def promote_waiting(now: datetime | None = None) -> list[Migration]:
    """Move every waiting migration whose slots are free (and whose time has
    come) to queued, in arrival order; the others get their reason. Returns
    the promoted records; the caller gives them their jobs after commit."""
    now = now or timezone.now()
    promoted: list[Migration] = []
    with transaction.atomic():
        _take_lock()
        waiting = list(Migration.objects.filter(state=MigrationState.WAITING).order_by("created_at", "pk"))
        if not waiting:
            return []
        limits, usage = Limits.now(), Usage.now()
        maintenance = set(Host.objects.filter(in_maintenance=True).values_list("name", flat=True))
        for m in waiting:
            if m.not_before and m.not_before > now:
                m.set_wait_reason(_scheduled(m.not_before))
                continue
            reason = usage.why_not(m, limits, maintenance)
            if reason:
                m.set_wait_reason(reason)
                usage.keep(m)
            elif m.promote():
                usage.take(m)
                promoted.append(m)
    return promoted


@dataclass(frozen=True)
class QueueEntry:
    migration: Migration
    position: int  # 1 = the next to start


def waiting_queue() -> list[QueueEntry]:
    """The waiting migrations in the order they will be considered."""
    waiting = Migration.objects.filter(state=MigrationState.WAITING).order_by("created_at", "pk")
    return [QueueEntry(m, i) for i, m in enumerate(waiting, start=1)]


def position_of(migration: Migration) -> int | None:
    """1 for the first waiting migration; None when it does not wait."""
    if migration.state != MigrationState.WAITING:
        return None
    earlier = Migration.objects.filter(state=MigrationState.WAITING, created_at__lt=migration.created_at).count()
    same_time = Migration.objects.filter(
        state=MigrationState.WAITING, created_at=migration.created_at, pk__lt=migration.pk
    ).count()
    return earlier + same_time + 1


def occupancy() -> dict[str, dict[str, int]]:
    """Per host: migrations it sends and receives now, and its limits (the home page's queue panel)."""
    limits, usage = Limits.now(), Usage.now()
    names = sorted(set(limits.outgoing) | set(usage.sending) | set(usage.receiving))
    return {
        name: {
            "sending": usage.sending[name],
            "receiving": usage.receiving[name],
            "max_outgoing": limits.out_of(name),
            "max_incoming": limits.into(name),
        }
        for name in names
    }
