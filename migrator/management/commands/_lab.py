"""What the lab benchmarks share: the lab with its hosts registered, a bench
operator, and a migration run in this process through the normal form, queue
and executor."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.lab import Lab, LabError
from hosts.models import Host
from migrator.executor import Executor
from migrator.forms import MigrationForm
from migrator.jobs import queue_migration
from migrator.models import Migration
from migrator.roles import OPERATORS


def lab_with_hosts() -> tuple[Lab, Host, Host]:
    """The lab, up, with every host registered; hosts lab-a and lab-b, the
    source and the destination of the benchmarks' migrations."""
    reason = Lab.cannot_run_reason()
    if reason:
        raise CommandError(f"The lab cannot run here: {reason}")
    lab = Lab()
    try:
        lab.up(start_guests=False)
        hosts = {host.name: host for host in lab.register()}
    except LabError as error:
        raise CommandError(str(error)) from None
    return lab, hosts["lab-a"], hosts["lab-b"]


def bench_user():
    user, _ = get_user_model().objects.get_or_create(username="bench")
    user.groups.add(Group.objects.get_or_create(name=OPERATORS)[0])
    return user


def queue_on_lab(source: Host, destination: Host, user, guest: str, prediction_for=None, **overrides) -> Migration:
    """Queue a migration of `guest` exactly as the wizard would, with `overrides`."""
    inventory.refresh_host(source)
    vm = source.vms.get(name=guest)
    # What the host offers (compression methods among them), as the wizard reads it.
    features = gateway.migration_features(connect_uri(source), vm.uuid)
    form = MigrationForm(MigrationForm.defaults(vm, destination, **overrides), vm=vm, features=features)
    if not form.is_valid():
        raise CommandError(f"{guest}: {form.errors.as_text()}")
    prediction = prediction_for(vm, destination, form.parameters()) if prediction_for else {}
    return queue_migration(
        vm=vm,
        destination=destination,
        parameters=form.parameters(),
        report=form.report,
        user=user,
        prediction=prediction,
    )


def run_here(migration: Migration) -> Migration:
    Executor(migration).run()
    migration.refresh_from_db()
    return migration
