"""Dirty-rate measurement from the VM page, through RQ, on a real guest."""

import django_rq
import pytest
from django.urls import reverse
from rq import SimpleWorker

from hosts import inventory
from migrator.jobs import QUEUE
from migrator.models import DirtyRateMeasurement

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_measures_a_hot_guest_as_a_curve_from_the_vm_page(lab, lab_hosts, guest, login):
    a, _b = lab_hosts
    guest("cache-hot")
    inventory.refresh_host(a)
    vm = a.vms.get(name="cache-hot")
    queue = django_rq.get_queue(QUEUE)
    queue.empty()
    response = login("operator").post(
        reverse("vm_dirty_rate", args=[vm.pk]), {"window_s": 1, "duration_s": 7, "curve": "on"}
    )
    assert response.status_code == 302
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    readings = list(DirtyRateMeasurement.objects.filter(vm_uuid=vm.uuid).order_by("measured_at"))
    assert [r.window_s for r in readings] == [1, 2, 4]
    by_window = {r.window_s: r.dirty_rate_mib_s for r in readings}
    print("cache-hot dirty rate by window:", by_window)
    # The guest dirties in bursts about once a second: one short window can
    # fall between two bursts, so the checks look at the curve as a whole.
    assert max(by_window.values()) > 10, "the guest really dirties memory"
    assert by_window[4] < max(by_window[1], by_window[2]), "re-dirtied pages count once over a longer window"
    assert all(r.mode == "page-sampling" for r in readings)
    page = login("auditor").get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert "MiB/s" in page and "page-sampling" in page
