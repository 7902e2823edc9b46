"""A hung destination on the lab: host B's libvirtd stopped with SIGSTOP (its
socket accepts connections and never answers). The wizard's destination step
answers within the bound and names lab-b, other pages answer meanwhile, and
libvirt's keepalive ends the call left waiting on B."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import Client, override_settings
from django.urls import reverse

from hosts import gateway, inventory
from hosts.connection import connect_uri
from hosts.lab import Lab
from hosts.models import Host

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

BOUND_S = 3
MARGIN_S = 5
# Keepalive gives up after interval × (count + 1) = 6 s of silence: after the page's bound.
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 2
DAEMON_BACK_S = 30


@contextlib.contextmanager
def stopped_daemon(lab: Lab, key: str) -> Iterator[None]:
    """The host's libvirtd stopped for the block, and continued whatever happens."""
    pid = int((lab.host_dir(key) / "libvirtd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
    assert gateway.wait_for(lambda: gateway.answers(lab.uri(key)), DAEMON_BACK_S), f"libvirtd {key} is back"


def _calls_waiting_on(uri: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"libvirt-call {uri}" and t.is_alive()]


def test_a_hung_destination_costs_the_destination_step_one_bound(lab, lab_hosts, guest, users):
    a, b = lab_hosts
    guest("idle")
    inventory.refresh_host(a)
    assert not a.inventory_error, a.inventory_error
    vm = a.vms.get(name="idle")
    assert vm.running, f"idle is {vm.state} on lab-a"
    # A third host that answers: it gets its normal report beside lab-b's.
    Host.objects.create(name="spare", uri="test:///default")
    wizard, other = Client(), Client()
    wizard.force_login(users["operator"])
    other.force_login(users["operator"])
    done: dict[str, object] = {}

    def open_destination_step() -> None:
        started = time.monotonic()
        try:
            done["response"] = wizard.get(reverse("migrator:new"), {"vm": vm.pk})
        finally:
            done["elapsed_s"], done["at"] = time.monotonic() - started, time.monotonic()
            connections.close_all()

    with override_settings(
        LIBVIRT_CONNECT_TIMEOUT_S=BOUND_S,
        LIBVIRT_CALL_TIMEOUT_S=BOUND_S,
        LIBVIRT_KEEPALIVE_INTERVAL_S=KEEPALIVE_INTERVAL_S,
        LIBVIRT_KEEPALIVE_COUNT=KEEPALIVE_COUNT,
    ):
        assert gateway.current_settings().call_timeout_s == BOUND_S
        gateway.close_all()  # connections from here on keep alive as configured above
        assert gateway.host_info(connect_uri(b)).hostname == "hostB"  # a pooled connection, as pages leave one
        try:
            with stopped_daemon(lab, "B"):
                page = threading.Thread(target=open_destination_step)
                page.start()
                time.sleep(0.5)  # the step now waits for B
                started = time.monotonic()
                home = other.get(reverse("home"))
                home_s, home_at = time.monotonic() - started, time.monotonic()
                page.join(BOUND_S + MARGIN_S)
                assert not page.is_alive(), "the destination step still waits for B"

                # Keepalive closes the connection the abandoned call waits on, while B is still stopped.
                assert gateway.wait_for(
                    lambda: not _calls_waiting_on(connect_uri(b)),
                    KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1) + MARGIN_S,
                ), "keepalive did not end the call waiting on the stopped daemon"
        finally:
            gateway.close_all()

    response = done["response"]
    print(f"destination step {done['elapsed_s']:.1f} s, home page {home_s:.2f} s")
    assert response.status_code == 200
    assert done["elapsed_s"] < BOUND_S + MARGIN_S
    assert home.status_code == 200 and home_s < BOUND_S and home_at < done["at"], "the home page waited for B"

    reports = {host.name: report for host, report, _plan in response.context["options"]}
    assert set(reports) == {"lab-b", "lab-c", "spare"}
    silent = reports["lab-b"]
    assert silent.no_answer == f"lab-b does not answer ({BOUND_S} s)."
    assert f"lab-b does not answer ({BOUND_S} s)." in response.content.decode()
    assert [(c.name, c.status) for c in silent.failures] == [("destination reachable", "fail")]
    assert {c.name: c.status for c in silent.checks}["VM running"] == "pass", "the source answered"
    assert {c.name: c.status for c in reports["spare"].checks}["destination reachable"] == "pass"
