"""The predictor learns from finished migrations and says how sure it is:
each formula pinned to a worked example, and learning moving the next
prediction toward the actual."""

from __future__ import annotations

import pytest
from django.urls import reverse

from migrator.models import Migration
from migrator.planning import learning, planner
from migrator.planning.prediction import predict_for

from .test_migration_model import make_migration
from .test_prediction import measure


@pytest.fixture
def vm(test_host):
    return test_host.vms.get(name="test")


# ------------------------------------------------------------------ formulas


@pytest.mark.parametrize(
    ("parameters", "key"),
    [
        ({}, "pre-copy"),
        ({"auto_converge": True}, "auto-converge"),
        ({"parallel_connections": 4}, "multifd"),
        ({"parallel_connections": 1}, "pre-copy"),
        ({"compression": "xbzrle", "auto_converge": True}, "xbzrle+auto-converge"),
        ({"timeout_s": 10, "timeout_action": "postcopy"}, "post-copy"),
        ({"disks": ["vda"], "parallel_connections": 2}, "copy-storage+multifd"),
    ],
)
def test_it_keys_residuals_by_the_options_that_change_the_run(parameters, key):
    assert learning.option_key(parameters) == key


def test_the_dirty_spread_is_p10_and_p90_over_the_mean():
    # quantiles(n=10, inclusive) of 10..50: 14 and 46; the mean is 30.
    low, high = planner.dirty_spread([10, 20, 30, 40, 50])
    assert (low, high) == pytest.approx((14 / 30, 46 / 30))
    assert planner.dirty_spread([8, 12]) == pytest.approx((0.8, 1.2))
    assert planner.dirty_spread([5]) == (1.0, 1.0)
    # A window between two bursts reads 0: the quiet end is very quiet, not nothing.
    assert planner.dirty_spread([0, 0, 6, 6]) == pytest.approx((planner.MIN_DIRTY_SCALE, 2.0))


def test_the_range_is_the_model_at_both_ends_times_the_residuals():
    # Nothing dirtied: T = setup 0.3 s + 1024 MiB / 100 MiB/s + switch-over 0.05 s = 10.59 s at any rate.
    inp = planner.PlanInput(memory_mib=1024, dirty_rate_mib_s=0, bandwidth_mib_s=100, rate_margin=0)
    nominal = planner.plan(inp)
    assert nominal.total_time_s == pytest.approx(10.59)
    r = planner.predicted_range(inp, nominal, dirty=(0.5, 1.5), residual=(1.2, 0.9, 1.5))
    assert r.estimate_s == pytest.approx(10.59 * 1.2)
    assert r.low_s == pytest.approx(10.59 * 0.9)
    assert r.high_s == pytest.approx(10.59 * 1.5)
    assert not r.too_close


def test_a_spread_that_straddles_convergence_is_too_close_to_call():
    # 90 MiB/s against a 100 MiB/s cap converges (slowly); at 1.2x it dirties faster than it copies.
    inp = planner.PlanInput(memory_mib=512, dirty_rate_mib_s=60, bandwidth_mib_s=100, max_downtime_ms=300)
    nominal = planner.plan(inp)
    r = planner.predicted_range(inp, nominal, dirty=(0.5, 1.8))
    assert r.verdict_low is not planner.Verdict.WILL_NOT_CONVERGE
    assert r.verdict_high is planner.Verdict.WILL_NOT_CONVERGE
    assert r.too_close and r.low_s is not None and r.high_s is None


# ------------------------------------------------------------------ learning


def _finished(vm, host, *, model_s: float, actual_s: float, destination="b", **parameters) -> Migration:
    m = make_migration(
        vm_uuid=vm.uuid,
        vm_name=vm.name,
        source_name=host.name,
        destination_name=destination,
        parameters=parameters,
        prediction={
            "available": True,
            "model_total_time_s": model_s,
            "model_version": planner.MODEL_VERSION,
            "plan": {"total_time_s": model_s},
        },
    )
    m.claim(1, "h")
    m.finish({"time_elapsed": int(actual_s * 1000), "data_processed": 2**20})
    return m


def test_a_residual_of_another_model_version_does_not_count(vm, test_host):
    m = _finished(vm, test_host, model_s=10, actual_s=12)
    assert learning.residual(m) == pytest.approx(1.2)
    m.prediction.pop("model_version")  # a record from before versions were kept
    assert learning.residual(m) is None
    m.prediction["model_version"] = planner.MODEL_VERSION - 1
    assert learning.residual(m) is None
    Migration.objects.filter(pk=m.pk).update(prediction=m.prediction)
    assert learning.learned(test_host.name, "b", "pre-copy").samples == 0


def test_it_learns_per_host_pair_and_option_then_from_every_pair(vm, test_host):
    for actual in (12, 15, 18):
        _finished(vm, test_host, model_s=10, actual_s=actual)
    _finished(vm, test_host, model_s=10, actual_s=30, auto_converge=True)

    pair = learning.learned(test_host.name, "b", "pre-copy")
    assert (pair.samples, pair.scope) == (3, "host pair")
    # The median 1.5, shrunk toward 1 by 3 / (3 + 2): 1.3.
    assert pair.factor == pytest.approx(1.3)
    # quantiles(n=10, inclusive) of 1.2, 1.5, 1.8: 1.26 and 1.74.
    assert (pair.low, pair.high) == pytest.approx((1.26, 1.74))
    # One residual of 3.0 moves the next prediction a third of the way: 1 + 2 / 3.
    assert learning.learned(test_host.name, "b", "auto-converge").factor == pytest.approx(5 / 3)

    elsewhere = learning.learned(test_host.name, "c", "pre-copy")
    assert (elsewhere.scope, elsewhere.factor) == ("all host pairs", pytest.approx(1.3))
    assert learning.learned(test_host.name, "b", "multifd") == learning.Learned(
        "multifd", 0, 1.0, *learning.DEFAULT_SPREAD, "none"
    )


def test_outliers_and_records_without_a_prediction_teach_nothing(vm, test_host):
    _finished(vm, test_host, model_s=10, actual_s=120)  # a stall or a paused guest: 12x
    first = _finished(vm, test_host, model_s=10, actual_s=14)
    first.prediction["zero_pages_known"] = False  # the VM's first migration: the model did not know its zero pages
    Migration.objects.filter(pk=first.pk).update(prediction=first.prediction)
    plain = make_migration(vm_uuid="other", source_name=test_host.name, destination_name="b")
    plain.claim(1, "h")
    plain.finish({"time_elapsed": 5000})
    assert learning.learned(test_host.name, "b", "pre-copy").samples == 0


def test_learning_moves_the_next_prediction_toward_the_actual(vm, test_host):
    # An earlier migration taught the VM's zero pages (none), as the lab's first migration would.
    earlier = make_migration(vm_uuid=vm.uuid, source_name="elsewhere", parameters={"bandwidth_mib_s": 100})
    earlier.claim(1, "h")
    earlier.finish({"time_elapsed": 5000, "memory_total": 2**33, "memory_constant": 0, "memory_page_size": 4096})
    measure(vm, 4, 5, 6)
    first = predict_for(vm, test_host, {"bandwidth_mib_s": 100})
    assert first["zero_pages_known"]
    assert first["learned"]["samples"] == 0 and first["range"]["low_s"] < first["plan"]["total_time_s"]
    model_s = first["model_total_time_s"]
    actual_s = model_s * 1.25  # the site is slower than the model

    # Capped: it teaches nothing of the link's speed, only the residual.
    m = make_migration(
        vm_uuid=vm.uuid,
        source_name=test_host.name,
        destination_name=test_host.name,
        parameters={"bandwidth_mib_s": 100},
        prediction=first,
    )
    m.claim(1, "h")
    m.finish({"time_elapsed": int(actual_s * 1000), "data_processed": 2**20})

    second = predict_for(vm, test_host, {"bandwidth_mib_s": 100})
    assert second["model_total_time_s"] == pytest.approx(model_s)
    assert abs(second["plan"]["total_time_s"] - actual_s) < abs(first["plan"]["total_time_s"] - actual_s)
    # One migration moves it a third of the way (1 + 0.25 / 3 times the model).
    assert second["plan"]["total_time_s"] == pytest.approx(model_s * (1 + 0.25 / 3), rel=0.01)
    assert second["range"]["low_s"] <= actual_s <= second["range"]["high_s"]
    assert second["learned"]["samples"] == 1 and second["learned"]["scope"] == "host pair"

    # A correction never compounds: the lesson is measured against the model's own figure.
    assert learning.residual(Migration.objects.get(pk=m.pk)) == pytest.approx(1.25, rel=0.01)


def test_the_host_and_vm_pages_show_what_was_learned(vm, test_host, login):
    for actual in (11, 12, 13):
        _finished(vm, test_host, model_s=10, actual_s=actual)
    host_page = login("operator").get(reverse("hosts:detail", args=[test_host.pk])).content.decode()
    # Median 1.2, shrunk by 3 / 5: 1.12.
    assert 'id="learned"' in host_page and "pre-copy" in host_page and "1.12" in host_page
    vm_page = login("auditor").get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert 'id="prediction-history"' in vm_page and "12.0 s" in vm_page
    assert 'id="learned"' not in login("security").get(reverse("hosts:detail", args=[test_host.pk])).content.decode()


def test_the_host_page_shows_what_compression_taught(vm, test_host, login):
    m = make_migration(
        vm_uuid=vm.uuid,
        source_name=test_host.name,
        destination_name="b",
        parameters={"bandwidth_mib_s": 16, "compression": "mt"},
        prediction={"available": True, "plan": {"data_sent_mib": 100.0}},
    )
    m.claim(1, "h")
    m.finish({"time_elapsed": 9000, "memory_processed": 50 * 2**20, "memory_total": 2**27, "memory_constant": 2**15})
    page = login("operator").get(reverse("hosts:detail", args=[test_host.pk])).content.decode()
    # 100 MiB of pages in 50 MiB sent; 9 s, of which 50 MiB at 16 MiB/s took 3.125 s:
    # the threads handled 128 MiB of zero pages and 100 MiB of data in 5.875 s.
    assert 'id="compression-learned"' in page and "2.00 MiB" in page and "39 MiB/s" in page
    assert (
        'id="compression-learned"'
        not in login("security").get(reverse("hosts:detail", args=[test_host.pk])).content.decode()
    )
