"""/metrics: the Prometheus text exposition of the migration queue, its
outcomes, the hosts and the certificates.

Every number is read from the database when Prometheus scrapes: no process
keeps a counter of its own, so every Daphne process on every machine answers
the same. The counters (migrations per outcome, data transferred) can only
grow because migration records are never deleted.

Who may scrape: a request with an API token of any role (`Authorization:
Bearer vmm_…`, from the API tokens page), a request from an address in
METRICS_ALLOWED_NETWORKS, or a signed-in user with any role. A token that is
unknown, revoked or expired is refused (401) even from an allowed network; a
user or token without any role gets 403.

The queries are bounded: the migration figures are one aggregate over the
records (conditional counts per histogram bucket, never a row per
migration), the per-host figures aggregate the active records by host, and
the rest reads the hosts, the certificates on record and the newest
dirty-rate reading of each VM.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.db.models import Count, F, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, Greatest
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from hosts.certificates.models import Certificate
from hosts.models import Host

from ..audit.requests import client_address
from ..fleet.slots import Limits
from ..models import (
    ACTIVE_STATES,
    FINAL_STATES,
    SLOT_STATES,
    WORKING_STATES,
    DirtyRateMeasurement,
    Migration,
    MigrationState,
)
from ..roles import has_role
from .authentication import SCHEMES, token_from_header
from .models import ApiToken

logger = logging.getLogger(__name__)

PREFIX = "vm_migrator_"
MIB = 1024 * 1024
DAY_S = 86400.0

# Upper bounds (seconds) of the histogram buckets. A live migration takes
# seconds to hours; its downtime (the VM paused for the switch-over)
# milliseconds to, for a VM that never converged, tens of seconds.
DURATION_BUCKETS_S = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
DOWNTIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# A host's state on the dashboard, first match wins.
HOST_STATES = ("disabled", "maintenance", "unreachable", "unknown", "online")


def _name(metric: str) -> str:
    return PREFIX + metric


# ---------------------------------------------------------------- access


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """METRICS_ALLOWED_NETWORKS parsed (a bare address is a one-address
    network); an entry that is no network is ignored, with a warning."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            logger.warning("METRICS_ALLOWED_NETWORKS: %r is not a network (write CIDRs such as 10.0.0.0/24).", entry)
    return tuple(networks)


def address_allowed(address: str | None) -> bool:
    """True when `address` is in one of METRICS_ALLOWED_NETWORKS."""
    networks = _networks(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def _tokens_page() -> str:
    try:
        return reverse("api_tokens")
    except NoReverseMatch:
        return "/account/tokens/"


def _plain(status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    for header, value in headers.items():
        response[header] = value
    return response


def _unauthorized(message: str) -> HttpResponse:
    return _plain(401, message, **{"WWW-Authenticate": 'Bearer realm="metrics"'})


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read the metrics, else the answer that refuses it."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    parts = header.split()
    if parts and parts[0].lower().encode("latin-1", "replace") in SCHEMES:
        plain = token_from_header(header)
        if plain is None:
            return _unauthorized("Send the token as 'Authorization: Bearer <token>'.")
        token = ApiToken.find(plain)
        if token is None:
            return _unauthorized(
                f"This API token is unknown, revoked or expired; create a new one on {_tokens_page()}."
            )
        token.touch()
        if not has_role(token.user):
            return _plain(403, "The token's owner holds no role; the metrics need a user with a role.")
        return None
    if address_allowed(client_address(request)):
        return None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        if not has_role(user):
            return _plain(403, "Your account holds no role; the metrics need a user with a role.")
        return None
    return _unauthorized(
        f"The metrics need an API token (create one on {_tokens_page()} and send 'Authorization: Bearer <token>') "
        "or a request from a network in METRICS_ALLOWED_NETWORKS."
    )


# ---------------------------------------------------------------- metrics


def _buckets(field: str, bounds_s: Iterable[float], succeeded: Q) -> dict[str, Count]:
    """Cumulative bucket counts of a millisecond column, as aggregates."""
    return {
        f"{field}_le_{i}": Count("pk", filter=succeeded & Q(**{f"{field}__lte": round(bound * 1000)}))
        for i, bound in enumerate(bounds_s)
    }


def _histogram(name: str, doc: str, field: str, bounds_s: Iterable[float], row: dict) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), row[f"{field}_le_{i}"]) for i, bound in enumerate(bounds_s)]
    buckets.append(("+Inf", row[f"{field}_count"]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=(row[f"{field}_sum"] or 0) / 1000)


def host_state(host: Host) -> str:
    if not host.enabled:
        return "disabled"
    if host.in_maintenance:
        return "maintenance"
    if host.inventory_error:
        return "unreachable"
    if host.inventory_refreshed_at is None:
        return "unknown"
    return "online"


class DatabaseCollector:
    """Reads every figure from the database at each collect()."""

    def __init__(self, now: datetime | None = None):
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        yield from self._migrations()
        yield from self._queue(now)
        yield from self._hosts()
        yield from self._dirty_rates()
        yield from self._certificates(now)

    # One aggregate over all records: outcomes, active states, histograms, data.
    def _migrations(self) -> Iterator[Metric]:
        succeeded = Q(state=MigrationState.SUCCEEDED)
        aggregates = {
            **{f"state_{state}": Count("pk", filter=Q(state=state)) for state in (*FINAL_STATES, *ACTIVE_STATES)},
            **_buckets("total_time_ms", DURATION_BUCKETS_S, succeeded),
            "total_time_ms_count": Count("pk", filter=succeeded & Q(total_time_ms__isnull=False)),
            "total_time_ms_sum": Sum("total_time_ms", filter=succeeded),
            **_buckets("downtime_ms", DOWNTIME_BUCKETS_S, succeeded),
            "downtime_ms_count": Count("pk", filter=succeeded & Q(downtime_ms__isnull=False)),
            "downtime_ms_sum": Sum("downtime_ms", filter=succeeded),
            "data_bytes": Sum("data_processed_bytes", filter=succeeded),
        }
        row = Migration.objects.order_by().aggregate(**aggregates)

        outcomes = CounterMetricFamily(
            _name("migrations"),
            "Migrations that reached each final state (outcome) since the dashboard was installed.",
            labels=["outcome"],
        )
        for state in FINAL_STATES:
            outcomes.add_metric([str(state)], row[f"state_{state}"])
        yield outcomes

        active = GaugeMetricFamily(
            _name("migrations_active"),
            "Migrations not finished yet, by state (waiting for a slot, queued for a worker, running, ...).",
            labels=["state"],
        )
        for state in ACTIVE_STATES:
            active.add_metric([str(state)], row[f"state_{state}"])
        yield active

        yield _histogram(
            _name("migration_duration_seconds"),
            "How long succeeded migrations took, from libvirt's job start to completion, in seconds.",
            "total_time_ms",
            DURATION_BUCKETS_S,
            row,
        )
        yield _histogram(
            _name("migration_downtime_seconds"),
            "How long succeeded migrations paused the VM at switch-over, in seconds.",
            "downtime_ms",
            DOWNTIME_BUCKETS_S,
            row,
        )
        yield CounterMetricFamily(
            _name("migration_data_bytes"),
            "Data (memory and disks) that succeeded migrations transferred, in bytes, from their final statistics.",
            value=row["data_bytes"] or 0,
        )

    # The queue per host: active records aggregated by source and destination.
    def _queue(self, now: datetime) -> Iterator[Metric]:
        waiting = Q(state=MigrationState.WAITING)
        due = waiting & (Q(not_before__isnull=True) | Q(not_before__lte=now))
        per_source = {
            row["source_name"]: row
            for row in Migration.objects.filter(state__in=ACTIVE_STATES)
            .order_by()
            .values("source_name")
            .annotate(
                running=Count("pk", filter=Q(state__in=WORKING_STATES)),
                waiting=Count("pk", filter=waiting),
                sending=Count("pk", filter=Q(state__in=SLOT_STATES)),
                # A scheduled migration waits from its start time, not from its creation.
                waiting_since=Min(Greatest(Coalesce("not_before", "created_at"), F("created_at")), filter=due),
            )
        }
        receiving = dict(
            Migration.objects.filter(state__in=SLOT_STATES)
            .order_by()
            .values("destination_name")
            .annotate(n=Count("pk"))
            .values_list("destination_name", "n")
        )
        limits = Limits.now()
        known = set(limits.outgoing)
        names = sorted(known | set(per_source))

        running = GaugeMetricFamily(
            _name("migrations_running"),
            "Migrations a worker is running (or cancelling) now, by source host.",
            labels=["host"],
        )
        waiting_g = GaugeMetricFamily(
            _name("migrations_waiting"),
            "Migrations waiting for a free slot or their scheduled start, by source host.",
            labels=["host"],
        )
        oldest = GaugeMetricFamily(
            _name("oldest_wait_seconds"),
            "How long the longest-waiting migration out of each host has waited for a slot, in seconds "
            "(0 when none waits; a migration scheduled for later counts from its start time).",
            labels=["host"],
        )
        for name in names:
            row = per_source.get(name, {})
            running.add_metric([name], row.get("running", 0))
            waiting_g.add_metric([name], row.get("waiting", 0))
            since = row.get("waiting_since")
            oldest.add_metric([name], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield running
        yield waiting_g
        yield oldest

        slots = GaugeMetricFamily(
            _name("host_slots"),
            "Migrations a host may send (outgoing) or receive (incoming) at once: its limit.",
            labels=["host", "direction"],
        )
        used = GaugeMetricFamily(
            _name("host_slots_used"),
            "Slots a host's queued and running migrations hold now, outgoing and incoming.",
            labels=["host", "direction"],
        )
        for name in sorted(known | set(per_source) | set(receiving)):
            slots.add_metric([name, "outgoing"], limits.out_of(name))
            slots.add_metric([name, "incoming"], limits.into(name))
            used.add_metric([name, "outgoing"], per_source.get(name, {}).get("sending", 0))
            used.add_metric([name, "incoming"], receiving.get(name, 0))
        yield slots
        yield used
        yield GaugeMetricFamily(
            _name("site_slots"), "Migrations the whole site may run at once: its limit.", value=limits.total
        )
        yield GaugeMetricFamily(
            _name("site_slots_used"),
            "Slots the site's queued and running migrations hold now.",
            value=sum(row["sending"] for row in per_source.values()),
        )

    def _hosts(self) -> Iterator[Metric]:
        counts = dict.fromkeys(HOST_STATES, 0)
        for host in Host.objects.only("enabled", "in_maintenance", "inventory_error", "inventory_refreshed_at"):
            counts[host_state(host)] += 1
        family = GaugeMetricFamily(
            _name("hosts"),
            "Hosts by state: online, unreachable (the last inventory failed), unknown (never inventoried), "
            "in maintenance, or disabled.",
            labels=["state"],
        )
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family

    # The newest reading of each VM measured: one subquery per VM, on the vm_uuid index.
    def _dirty_rates(self) -> Iterator[Metric]:
        same_vm = DirtyRateMeasurement.objects.filter(vm_uuid=OuterRef("vm_uuid"))
        newest = same_vm.order_by("-measured_at", "-pk").values("pk")
        latest = (
            DirtyRateMeasurement.objects.order_by()
            .values("vm_uuid")
            .distinct()
            .annotate(newest=Subquery(newest[:1]))
            .values("newest")
        )
        readings = DirtyRateMeasurement.objects.filter(pk__in=latest).order_by("vm_name", "vm_uuid")
        rate = GaugeMetricFamily(
            _name("vm_dirty_rate_bytes_per_second"),
            "How fast each VM dirtied its memory at its latest dirty-rate measurement, in bytes per second.",
            labels=["vm", "vm_uuid", "host"],
        )
        measured = GaugeMetricFamily(
            _name("vm_dirty_rate_measured_timestamp_seconds"),
            "When that latest dirty-rate measurement of each VM was taken (Unix time).",
            labels=["vm", "vm_uuid", "host"],
        )
        for reading in readings.only("vm_uuid", "vm_name", "host_name", "measured_at", "dirty_rate_mib_s"):
            labels = [reading.vm_name, reading.vm_uuid, reading.host_name]
            rate.add_metric(labels, reading.dirty_rate_mib_s * MIB)
            measured.add_metric(labels, reading.measured_at.timestamp())
        yield rate
        yield measured

    def _certificates(self, now: datetime) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            _name("certificate_expiry_days"),
            "Days until each certificate on record expires (negative once expired).",
            labels=["id", "kind", "name", "subject", "host"],
        )
        certificates = (
            Certificate.objects.active()
            .select_related("host")
            .only("kind", "name", "subject", "not_after", "host__name")
            .order_by("not_after", "pk")
        )
        for cert in certificates:
            host = cert.host.name if cert.host_id and cert.host else ""
            labels = [str(cert.pk), cert.kind, cert.name, cert.subject, host]
            family.add_metric(labels, round((cert.not_after - now).total_seconds() / DAY_S, 3))
        yield family


def exposition(now: datetime | None = None) -> bytes:
    """The metrics in Prometheus' text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(now))
    return generate_latest(registry)


@require_safe
def scrape(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
