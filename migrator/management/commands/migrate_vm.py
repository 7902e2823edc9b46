"""Queue a live migration from the command line, through exactly the same
form, pre-checks, queue and record as the browser wizard."""

from __future__ import annotations

import argparse
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError
from django.utils import timezone

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.models import Host
from migrator import policies
from migrator.audit.models import AuditEvent
from migrator.forms import DEFAULT_MAX_DOWNTIME_MS, MigrationForm
from migrator.jobs import queue_migration
from migrator.models import Migration, MigrationState
from migrator.planning.prediction import predict_for
from migrator.roles import OPERATORS, has_role

MIB = 1024 * 1024


class Command(BaseCommand):
    help = "Live-migrate a VM: migrate_vm VM --from HOST --to HOST [options]. Exit 0 only when it succeeded."

    def add_arguments(self, parser):
        parser.add_argument("vm", help="VM name or UUID on the source host")
        parser.add_argument("--from", dest="source", required=True, help="source host name")
        parser.add_argument("--to", dest="destination", required=True, help="destination host name")
        parser.add_argument("--user", required=True, help="the operator recorded as starting it")
        parser.add_argument("--bandwidth", type=int, default=0, help="MiB/s, 0 = unlimited")
        parser.add_argument(
            "--policy",
            default=policies.DEFAULT_POLICY,
            help=f"migration policy: {', '.join(policies.POLICIES)} (default {policies.DEFAULT_POLICY}: the options "
            "below)",
        )
        parser.add_argument(
            "--postcopy-after",
            type=int,
            help=f"N of --policy {policies.POSTCOPY_AFTER}: seconds of pre-copy before post-copy "
            f"(default {policies.DEFAULT_POSTCOPY_AFTER_S})",
        )
        parser.add_argument(
            "--completion-timeout-per-gib",
            type=int,
            default=policies.DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S,
            help="seconds per GiB of memory and copied disk before the policy's action, 0 = none (default "
            f"{policies.DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S})",
        )
        parser.add_argument(
            "--progress-timeout",
            type=int,
            default=policies.DEFAULT_PROGRESS_TIMEOUT_S,
            help="seconds without a fall in the remaining data before the policy's action, 0 = none (default "
            f"{policies.DEFAULT_PROGRESS_TIMEOUT_S})",
        )
        parser.add_argument(
            "--start-at", help="start at this time, 'YYYY-MM-DD HH:MM' in the server's time zone (default: now)"
        )
        parser.add_argument(
            "--max-downtime", type=int, help=f"milliseconds (custom policy; default {DEFAULT_MAX_DOWNTIME_MS})"
        )
        parser.add_argument("--auto-converge", action="store_true", help="custom policy")
        parser.add_argument(
            "--postcopy",
            action="store_true",
            help="custom policy: allow post-copy (switch with control_migration ID postcopy)",
        )
        parser.add_argument("--timeout", type=int, help="custom policy: seconds of pre-copy before --timeout-action")
        parser.add_argument(
            "--timeout-action",
            choices=["suspend", "postcopy", "abort"],
            help="custom policy: what its timeouts do (default suspend)",
        )
        parser.add_argument(
            "--disks",
            help="comma-separated targets to copy, e.g. vda,vdb, or 'none' (default: every writable local disk, "
            "as the wizard offers)",
        )
        parser.add_argument("--no-create-images", action="store_true", help="copy into existing images")
        parser.add_argument(
            "--replace-stale-images",
            action="store_true",
            help="delete an image at the same path on the destination that no VM there uses, and copy afresh",
        )
        parser.add_argument(
            "--keep-source-images", action="store_true", help="keep the copied images on the source after success"
        )
        parser.add_argument("--compression", default="", help="xbzrle, mt, zlib or zstd (what the host supports)")
        parser.add_argument("--compression-level", type=int)
        parser.add_argument("--compression-threads", type=int)
        parser.add_argument("--decompression-threads", type=int)
        parser.add_argument("--tls", action="store_true")
        parser.add_argument("--parallel", type=int, default=0, help="parallel connections (multifd), 2 or more")
        parser.add_argument("--pin", default="", help="CPUs for the migration threads, e.g. 0-1")
        parser.add_argument("--transient", action="store_true", help="do not keep the VM persistent on the destination")
        parser.add_argument("--keep-source", action="store_true", help="do not undefine the VM on the source")
        parser.add_argument(
            "--unsafe",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="skip libvirt's storage-safety check (default: on when disks stay on shared storage, "
            "as the guide does)",
        )
        parser.add_argument("--wait", action="store_true", help="print progress until the migration ends")
        parser.add_argument(
            "--run-here", action="store_true", help="run the migration in this process instead of an RQ worker"
        )

    def handle(self, *args, **o):
        user = self._user(o["user"])
        source = self._host(o["source"])
        destination = self._host(o["destination"])
        inventory.refresh_host(source)
        if source.inventory_error:
            raise CommandError(f"{source.name} does not answer: {source.inventory_error}")
        vm = source.vms.filter(name=o["vm"]).first() or source.vms.filter(uuid=o["vm"]).first()
        if vm is None:
            raise CommandError(f"No VM named {o['vm']} on {source.name}.")
        policy = self._policy(o)
        disks = None
        if o["disks"] is not None:
            disks = [d.strip() for d in o["disks"].split(",") if d.strip() and d.strip() != "none"]
        data = {
            "destination": destination.pk,
            "disks": disks,
            "create_images": not o["no_create_images"],
            "replace_stale_images": o["replace_stale_images"],
            "remove_source_images": not o["keep_source_images"],
            "policy": policy.name,
            "postcopy_after_s": policies.DEFAULT_POSTCOPY_AFTER_S
            if o["postcopy_after"] is None
            else o["postcopy_after"],
            "completion_timeout_per_gib_s": o["completion_timeout_per_gib"] or "",
            "progress_timeout_s": o["progress_timeout"] or "",
            "start_at": o["start_at"] or "",
            "max_downtime_ms": DEFAULT_MAX_DOWNTIME_MS if o["max_downtime"] is None else o["max_downtime"],
            "bandwidth_mib_s": o["bandwidth"],
            "auto_converge": o["auto_converge"],
            "allow_postcopy": o["postcopy"],
            "timeout_s": "" if o["timeout"] is None else o["timeout"],
            "timeout_action": o["timeout_action"] or "suspend",
            "compression": o["compression"],
            "compression_level": "" if o["compression_level"] is None else o["compression_level"],
            "compression_threads": "" if o["compression_threads"] is None else o["compression_threads"],
            "decompression_threads": "" if o["decompression_threads"] is None else o["decompression_threads"],
            "parallel_connections": o["parallel"],
            "tls": o["tls"],
            "pin_cpus": o["pin"],
            "persistent_dest": not o["transient"],
            "undefine_source": not o["keep_source"],
            "unsafe": o["unsafe"],
        }
        if disks is None:
            data["disks"] = MigrationForm.defaults(vm, destination).get("disks", [])
        # Unticked checkboxes are absent from a browser's POST; mirror that.
        data = {k: v for k, v in data.items() if v is not False}
        try:
            features = gateway.migration_features(connect_uri(source), vm.uuid)
        except gateway.GatewayError:
            features = None
        if o["unsafe"] is None:
            data.pop("unsafe", None)
            if MigrationForm(vm=vm, features=features).default_unsafe:
                data["unsafe"] = True
        form = MigrationForm(data, vm=vm, features=features)
        valid = form.is_valid()
        if form.report is not None:
            for check in form.report.checks:
                self.stdout.write(f"  {check.status.upper():4}  {check.name}: {check.message}")
        if not valid:
            raise CommandError(_first_error(form))
        try:
            migration = queue_migration(
                vm=vm,
                destination=destination,
                parameters=form.parameters(),
                report=form.report,
                user=user,
                prediction=predict_for(vm, destination, form.parameters()),
                not_before=form.scheduled_start,
            )
        except IntegrityError:
            existing = Migration.objects.active().for_vm(vm.uuid).first()
            number = existing.pk if existing else "?"
            raise CommandError(f"{vm.name} is already being migrated (migration #{number}).") from None
        AuditEvent.record("migration.started", actor=user, obj=migration, details={"via": "migrate_vm"})
        when = ""
        if form.scheduled_start:
            when = f", to start at {timezone.localtime(form.scheduled_start):%Y-%m-%d %H:%M %Z}"
        self.stdout.write(
            f"Queued migration #{migration.pk}: {vm.name} {source.name} → {destination.name} "
            f"({policy.label} policy{when})"
        )
        if o["run_here"]:
            from migrator.executor import Executor

            Executor(migration).run()
        if not (o["wait"] or o["run_here"]):
            return
        migration = self._wait(migration)
        self._summary(migration)
        if migration.state != MigrationState.SUCCEEDED:
            raise CommandError(f"Migration #{migration.pk} {migration.state}: {_reason(migration)}")

    def _policy(self, o: dict) -> policies.Policy:
        """The policy named by --policy; options that only the custom policy
        or post-copy after N s reads are refused with another one."""
        try:
            policy = policies.get(o["policy"])
        except policies.UnknownPolicy as error:
            raise CommandError(f"--policy: {error}") from None
        if policy.is_preset:
            given = [
                flag
                for flag, key in (
                    ("--max-downtime", "max_downtime"),
                    ("--timeout", "timeout"),
                    ("--timeout-action", "timeout_action"),
                )
                if o[key] is not None
            ] + [flag for flag, key in (("--auto-converge", "auto_converge"), ("--postcopy", "postcopy")) if o[key]]
            if given:
                raise CommandError(
                    f"{', '.join(given)}: the {policy.label} policy decides {'these' if len(given) > 1 else 'this'} "
                    "itself; leave them out, or use --policy custom."
                )
        if o["postcopy_after"] is not None and policy.name != policies.POSTCOPY_AFTER:
            raise CommandError(
                f"--postcopy-after is the N of --policy {policies.POSTCOPY_AFTER}; leave it out with --policy "
                f"{policy.name}."
            )
        return policy

    def _wait(self, migration: Migration) -> Migration:
        last = None
        while True:
            migration.refresh_from_db()
            sample = migration.last_sample
            if sample and sample.get("elapsed_ms") != last:
                last = sample.get("elapsed_ms")
                total = sample.get("data_total_bytes") or 1
                self.stdout.write(
                    f"  {sample['elapsed_ms'] / 1000:7.1f} s  {100 * sample['data_processed_bytes'] / total:5.1f} %  "
                    f"iteration {sample['iteration']}  {sample['throughput_mib_s']:.1f} MiB/s  "
                    f"dirty {sample['dirty_rate_mib_s']:.1f} MiB/s  "
                    f"remaining {sample['data_remaining_bytes'] / MIB:.1f} MiB"
                )
            if not migration.in_flight:
                return migration
            time.sleep(1)

    def _summary(self, m: Migration) -> None:
        self.stdout.write(
            f"Migration #{m.pk} {m.state}: total {m.total_time_ms} ms, downtime {m.downtime_ms} ms, "
            f"data {(m.data_processed_bytes or 0) / MIB:.1f} MiB, iterations {m.iterations}. {m.outcome_note}"
        )

    def _user(self, username: str):
        if not username:
            return None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username}; create one with manage.py create_user.")
        if not has_role(user, OPERATORS):
            raise CommandError(f"{username} is not an operator; only operators start migrations.")
        return user

    def _host(self, name: str) -> Host:
        host = Host.objects.filter(name=name).first()
        if host is None:
            names = ", ".join(Host.objects.values_list("name", flat=True)) or "none registered"
            raise CommandError(f"No host named {name} (hosts: {names}).")
        return host


OPTION_NAMES = {
    "policy": "--policy",
    "postcopy_after_s": "--postcopy-after",
    "completion_timeout_per_gib_s": "--completion-timeout-per-gib",
    "progress_timeout_s": "--progress-timeout",
    "start_at": "--start-at",
    "disks": "--disks",
    "max_downtime_ms": "--max-downtime",
    "bandwidth_mib_s": "--bandwidth",
    "timeout_s": "--timeout",
    "timeout_action": "--timeout-action",
    "compression": "--compression",
    "compression_level": "--compression-level",
    "compression_threads": "--compression-threads",
    "decompression_threads": "--decompression-threads",
    "parallel_connections": "--parallel",
    "tls": "--tls",
    "pin_cpus": "--pin",
    "persistent_dest": "--transient",
    "destination": "--to",
}


def _first_error(form: MigrationForm) -> str:
    """Every refusal, each with the option it concerns."""
    lines = []
    for field, errors in form.errors.items():
        label = "" if field == "__all__" else f"{OPTION_NAMES.get(field, form.fields[field].label or field)}: "
        lines.extend(f"{label}{error}" for error in errors)
    return "\n".join(lines) or "The parameters are not valid."


def _reason(m: Migration) -> str:
    return " ".join(x for x in (m.error_message, m.outcome_note) if x) or "see the record"
