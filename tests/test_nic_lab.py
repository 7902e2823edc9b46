"""R4 on the real lab: a guest plugged into a host bridge that only the
source has is refused before anything runs, by name, from every entry point."""

from __future__ import annotations

import django_rq
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from hosts import gateway, inventory
from hosts.connection import connect_uri
from migrator.jobs import QUEUE
from migrator.models import Migration

from .test_migration_lab import form_for

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

GUEST, BRIDGE, MAC = "nic-bridged", "brlab0", "52:54:00:77:00:01"
REFUSAL = f"is on bridge {BRIDGE}, which does not exist on lab-b"


@pytest.fixture
def bridged_guest(lab):
    """A running guest on A whose only NIC is on a bridge that only A has."""
    lab.add_bridge("A", BRIDGE)
    lab.remove_bridge("B", BRIDGE)
    nic = (
        f"<interface type='bridge'><mac address='{MAC}'/><source bridge='{BRIDGE}'/><model type='virtio'/></interface>"
    )
    try:
        lab.define_guest(GUEST, 128, dirty_mb=0, interfaces=[nic])
        # Running is what the pre-checks ask for; booting to the dirty loop is not needed.
        gateway.start_domain(lab.uri("A"), GUEST)
        yield GUEST
    finally:
        lab.remove_guest(GUEST)
        lab.serial_log(GUEST, "A").unlink(missing_ok=True)
        lab.remove_bridge("A", BRIDGE)
        lab.remove_bridge("B", BRIDGE)


def test_libvirt_reports_the_bridge_on_the_source_only(lab, lab_hosts, bridged_guest):
    a, b = lab_hosts
    assert BRIDGE in gateway.host_info(connect_uri(a)).bridges
    assert BRIDGE not in gateway.host_info(connect_uri(b)).net_devices
    inventory.refresh_host(a)
    (nic,) = a.vms.get(name=GUEST).interfaces
    assert (nic["type"], nic["source"], nic["mac"]) == ("bridge", BRIDGE, MAC)
    assert nic["target"].startswith("vnet"), nic


def test_a_nic_on_a_bridge_only_the_source_has_is_refused_before_anything_runs(
    lab, lab_hosts, bridged_guest, queue, users, login
):
    a, b = lab_hosts
    form = form_for(a, b, GUEST)
    assert not form.is_valid()
    errors = " ".join(form.non_field_errors())
    print(errors)
    assert f"NIC {MAC}" in errors and REFUSAL in errors, errors
    assert [c.name for c in form.report.failures] == [f"NIC {MAC}"], form.report.failures
    assert "R4" == form.report.failures[0].requirement

    vm = a.vms.get(name=GUEST)
    page = login("operator").get(reverse("migrator:new"), {"vm": vm.pk}).content.decode()
    assert REFUSAL in page, page
    assert "Choose lab-b" not in page

    with pytest.raises(CommandError) as refused:
        call_command("migrate_vm", GUEST, "--from", "lab-a", "--to", "lab-b", "--user", users["operator"].username)
    assert REFUSAL in str(refused.value), refused.value

    assert not Migration.objects.exists()
    assert queue.count == 0 and django_rq.get_queue(QUEUE).count == 0
    assert lab.where(GUEST) == "A"
    assert gateway.find_vm(connect_uri(b), name=GUEST) is None


def test_the_same_guest_passes_once_the_destination_has_the_bridge(lab, lab_hosts, bridged_guest):
    a, b = lab_hosts
    lab.add_bridge("B", BRIDGE)
    form = form_for(a, b, GUEST)
    assert form.is_valid(), form.errors
    check = next(c for c in form.report.checks if c.name == f"NIC {MAC}")
    assert check.status == "pass" and f"bridge {BRIDGE}, which exists on lab-b" in check.message
