"""On the lab: a real migration teaches the predictor, and the next
prediction of the same kind lands nearer to what libvirt measured."""

from __future__ import annotations

import uuid

import pytest

from hosts import inventory
from migrator.management.commands._lab import queue_on_lab, run_here
from migrator.planning.dirtyrate import measure_series
from migrator.planning.prediction import predict_for

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

CAP = {"bandwidth_mib_s": 32, "max_downtime_ms": 300}


def _there_and_back(a, b, user, name: str, **prediction) -> float:
    """Migrate `name` from a to b and back; the first leg's total time, s."""
    there = run_here(queue_on_lab(a, b, user, name, **prediction, **CAP))
    assert there.state == "succeeded", there.error_message
    back = run_here(queue_on_lab(b, a, user, name, **CAP))
    assert back.state == "succeeded", back.error_message
    return there.total_time_ms / 1000


def test_a_migration_moves_the_next_prediction_toward_its_actual(lab, lab_hosts, guest, users):
    a, b = lab_hosts
    user = users["operator"]
    name = guest("web-shared")
    _there_and_back(a, b, user, name)  # teaches the VM's zero pages, as a site's first migration would

    inventory.refresh_host(a)
    vm = a.vms.get(name=name)
    assert measure_series(vm.pk, 1, 7, str(uuid.uuid4()), user.username, curve=True) >= 3
    first = predict_for(vm, b, CAP)
    assert first["available"] and first["zero_pages_known"] and first["learned"]["samples"] == 0
    actual_s = _there_and_back(a, b, user, name, prediction_for=predict_for)

    second = predict_for(a.vms.get(name=name), b, CAP)
    print(
        f"model {first['model_total_time_s']:.2f} s, first {first['plan']['total_time_s']:.2f} s, "
        f"actual {actual_s:.2f} s, second {second['plan']['total_time_s']:.2f} s"
    )
    assert second["learned"]["samples"] == 1 and second["learned"]["scope"] == "host pair"
    miss_before = abs(first["plan"]["total_time_s"] - actual_s)
    miss_after = abs(second["plan"]["total_time_s"] - actual_s)
    # The readings are the same, so only the lesson moves it: toward the actual, never past it.
    assert miss_after <= miss_before + 0.05 * actual_s
    if miss_before > 0.05 * actual_s:
        assert miss_after < miss_before
    assert second["range"]["low_s"] <= second["plan"]["total_time_s"] <= second["range"]["high_s"]
