import django_rq
import pytest
from django.urls import reverse

from migrator.jobs import QUEUE
from migrator.models import DirtyRateMeasurement, Migration, MigrationSample
from migrator.planning import dirtyrate
from migrator.planning.prediction import (
    learned_compression,
    learned_switchover_ms,
    learned_throughput_mib_s,
    learned_zero_page_fraction,
    predict_for,
)

from .test_migration_model import make_migration


@pytest.fixture
def vm(test_host):
    return test_host.vms.get(name="test")


def measure(vm, *rates, window_s=1, series="s1"):
    for rate in rates:
        DirtyRateMeasurement.objects.create(
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            host=vm.host,
            host_name=vm.host.name,
            series=series,
            window_s=window_s,
            dirty_rate_mib_s=rate,
        )


def test_it_asks_for_a_dirty_rate_measurement_first(vm, test_host):
    prediction = predict_for(vm, test_host, {"bandwidth_mib_s": 100})
    assert not prediction["available"] and "dirty page rate" in prediction["reason"]


def test_it_asks_for_a_bandwidth_when_the_link_is_unknown(vm, test_host):
    measure(vm, 5)
    prediction = predict_for(vm, test_host, {"bandwidth_mib_s": 0})
    assert not prediction["available"] and "bandwidth limit" in prediction["reason"]


def test_it_predicts_from_the_latest_series_and_the_cap(vm, test_host):
    measure(vm, 100, series="old")
    measure(vm, 2, 4, series="new")
    prediction = predict_for(vm, test_host, {"bandwidth_mib_s": 100, "max_downtime_ms": 500})
    assert prediction["available"]
    assert prediction["dirty_rate_mib_s"] == pytest.approx(3)
    assert prediction["bandwidth_source"] == "the bandwidth limit"
    assert prediction["plan"]["verdict"] == "converges"
    # Never migrated: every page counts as data, and the review step says so.
    assert prediction["zero_page_fraction"] == 0 and not prediction["zero_pages_known"]
    # ...and the range reaches a first migration that finds most of the memory zero.
    assert prediction["range"]["low_s"] < 0.5 * prediction["plan"]["total_time_s"]


def test_it_adds_the_copied_disks_data_at_the_cap(vm, test_host):
    vm.disks = [
        {"target": "vda", "capacity_bytes": 8 * 2**30, "allocation_bytes": 96 * 2**20},
        {"target": "vdb", "capacity_bytes": 2**30, "allocation_bytes": None},
    ]
    measure(vm, 1)
    shared = predict_for(vm, test_host, {"bandwidth_mib_s": 32})
    local = predict_for(vm, test_host, {"bandwidth_mib_s": 32, "disks": ["vda"]})
    both = predict_for(vm, test_host, {"bandwidth_mib_s": 32, "disks": ["vda", "vdb"]})
    # vda holds 96 MiB of its 8 GiB: under the cap the mirror counts its unwritten
    # 8096 MiB too (256 s at 32 MiB/s); vdb's allocation is unknown: its whole 1 GiB (32 s).
    assert local["plan"]["total_time_s"] - shared["plan"]["total_time_s"] == pytest.approx(256.0, abs=0.01)
    assert both["plan"]["total_time_s"] - shared["plan"]["total_time_s"] == pytest.approx(288.0, abs=0.01)
    assert (local["disk_mib"], local["disk_unwritten_mib"], local["disk_copy_s"]) == (96.0, 8096.0, 256.0)
    assert shared["disk_mib"] == 0


def test_it_recommends_form_changes_when_the_vm_will_not_converge(vm, test_host):
    vm.memory_kib = 256 * 1024  # like the lab's cache-hot
    measure(vm, 32)
    prediction = predict_for(vm, test_host, {"bandwidth_mib_s": 8, "max_downtime_ms": 300})
    assert prediction["plan"]["verdict"] == "will_not_converge"
    changes = {c["parameter"]: c["changes"] for c in prediction["form_changes"]}
    assert "auto_converge" in changes and changes["auto_converge"] == {"auto_converge": True}
    for change in prediction["form_changes"]:
        assert change["explanation"]


def test_it_learns_the_link_and_the_zero_pages_from_finished_migrations(vm, test_host):
    m = make_migration(vm_uuid=vm.uuid, source_name=test_host.name, destination_name="b", parameters={})
    m.claim(1, "h")
    for speed in (90, 110, 100):
        MigrationSample.objects.create(migration=m, throughput_mib_s=speed)
    m.finish(
        {
            "time_elapsed": 1000,
            "data_processed": 2**20 * 50,
            "memory_total": 2**28,
            "memory_constant": 2**15,
            "memory_page_size": 4096,
        }
    )
    assert learned_throughput_mib_s(test_host.name, "b") == pytest.approx(100)
    assert learned_zero_page_fraction(vm.uuid) == pytest.approx(0.5)
    assert learned_zero_page_fraction("never-migrated") is None
    capped = make_migration(
        vm_uuid="x", source_name=test_host.name, destination_name="c", parameters={"bandwidth_mib_s": 8}
    )
    capped.claim(1, "h")
    capped.finish({"time_elapsed": 1000, "data_processed": 2**23})
    assert learned_throughput_mib_s(test_host.name, "c") is None, "a capped migration says nothing of the link"


def test_it_learns_the_compression_ratio_and_the_threads_pace(vm, test_host):
    assert learned_compression(test_host.name, "mt") is None
    # 100 MiB of pages in 62.5 MiB on the wire at a 16 MiB/s cap: sending took
    # 3.9 s of the 5.0 s copy, so the threads worked 1.1 s for the 256 MiB of the
    # first pass (data and zero pages) and the 10 MiB that later passes sent.
    for vm_uuid, compression in (("vm-1", "mt"), ("vm-2", "")):
        m = make_migration(
            vm_uuid=vm_uuid,
            source_name=test_host.name,
            destination_name="b",
            parameters={"bandwidth_mib_s": 16, "compression": compression},
            prediction={"available": True, "plan": {"data_sent_mib": 100.0}},
        )
        m.claim(1, "h")
        m.finish(
            {
                "time_elapsed": 5100,
                "setup_time": 50,
                "downtime": 50,
                "memory_processed": int(62.5 * 2**20),
                "memory_total": 2**28,
                "memory_constant": 2**28 // 4096 - 90 * 256,  # 90 MiB of data pages
                "memory_page_size": 4096,
            }
        )
    learned = learned_compression(test_host.name, "mt")
    assert learned["samples"] == 1, "a migration without compression says nothing of it"
    assert learned["ratio"] == pytest.approx(1.6)
    assert learned["compress_mib_s"] == pytest.approx((256 + 10) / (5.0 - 62.5 / 16), rel=1e-3)
    assert learned_compression("b", "mt") is None, "per source host"


def test_a_prediction_with_compression_uses_what_was_learned(vm, test_host):
    measure(vm, 2)
    parameters = {"bandwidth_mib_s": 16, "compression": "mt", "max_downtime_ms": 300}
    first = predict_for(vm, test_host, parameters)
    assert first["compression"] == {"method": "mt", "samples": 0, "ratio": None, "compress_mib_s": None}
    m = make_migration(
        vm_uuid="vm-1",
        source_name=test_host.name,
        destination_name=test_host.name,
        parameters=parameters,
        prediction={"available": True, "plan": {"data_sent_mib": 100.0}},
    )
    m.claim(1, "h")
    m.finish({"time_elapsed": 9000, "memory_processed": 50 * 2**20, "memory_total": 2**27, "memory_constant": 2**15})
    second = predict_for(vm, test_host, parameters)
    assert second["compression"]["ratio"] == pytest.approx(2.0)
    # 128 MiB of memory, all of it zero pages at the end, and 100 MiB sent by the passes.
    assert second["compression"]["compress_mib_s"] == pytest.approx((128 + 100) / (9.0 - 50 / 16), rel=1e-3)
    # Twice the page data per wire byte, but threads that also take their time.
    assert second["plan"]["iterations_detail"][0]["duration_s"] != first["plan"]["iterations_detail"][0]["duration_s"]
    assert first["range"]["high_s"] > first["plan"]["total_time_s"] * 1.3, "unknown pace: the range reaches no gain"


def test_it_learns_the_switch_over_cost_from_the_shortest_recent_pause(vm, test_host):
    assert learned_switchover_ms(test_host.name, "b") is None
    # An uncapped migration pauses while it copies up to bandwidth x downtime-limit;
    # a capped one switches over with a few MiB: the fixed cost is at most the shorter pause.
    for downtime, parameters in ((180, {}), (16, {"bandwidth_mib_s": 32}), (25, {"timeout_s": 60})):
        m = make_migration(
            vm_uuid=f"vm-{downtime}", source_name=test_host.name, destination_name="b", parameters=parameters
        )
        m.claim(1, "h")
        m.finish({"time_elapsed": 1000, "downtime": downtime})
    assert learned_switchover_ms(test_host.name, "b") == 16
    assert learned_switchover_ms("b", test_host.name) is None, "per direction"


def test_it_refuses_to_measure_while_the_vm_migrates(vm, login):
    assert dirtyrate.refusal(vm) == ""
    m = make_migration(vm_uuid=vm.uuid)
    assert "being migrated" in dirtyrate.refusal(vm)
    client = login("operator")
    response = client.post(reverse("vm_dirty_rate", args=[vm.pk]), {"window_s": 1, "duration_s": 5}, follow=True)
    assert "being migrated" in response.content.decode()
    assert Migration.objects.get(pk=m.pk).state == "queued"


def test_it_validates_the_measurement_form():
    assert not dirtyrate.DirtyRateForm({"window_s": 5, "duration_s": 2}).is_valid()
    assert not dirtyrate.DirtyRateForm({"window_s": 0, "duration_s": 2}).is_valid()
    assert dirtyrate.DirtyRateForm({"window_s": 1, "duration_s": 10}).is_valid()


def test_it_shows_the_latest_rate_and_history_on_the_vm_page(vm, login):
    measure(vm, 12.5)
    page = login("auditor").get(reverse("hosts:vm", args=[vm.pk])).content.decode()
    assert "12.5 MiB/s" in page and "chart-dirty-rate" in page


def test_the_wizard_measures_in_the_background_and_answers_in_json(vm, login, django_capture_on_commit_callbacks):
    client = login("operator")
    url = reverse("vm_dirty_rate", args=[vm.pk])
    bad = client.post(url, {"window_s": 5, "duration_s": 2}, HTTP_ACCEPT="application/json")
    assert bad.status_code == 409 and not bad.json()["ok"]
    assert "at least one window" in bad.json()["message"]
    queue = django_rq.get_queue(QUEUE)
    queue.empty()
    # django-rq enqueues when the request's transaction commits.
    with django_capture_on_commit_callbacks(execute=True):
        started = client.post(url, {"window_s": 1, "duration_s": 5, "curve": "on"}, HTTP_ACCEPT="application/json")
    assert started.status_code == 200 and started.json()["ok"] and started.json()["series"]
    assert "1 s windows for 5 s" in started.json()["message"]
    assert queue.count == 1
    queue.empty()
    make_migration(vm_uuid=vm.uuid)
    busy = client.post(url, {"window_s": 1, "duration_s": 5}, HTTP_ACCEPT="application/json")
    assert busy.status_code == 409 and "being migrated" in busy.json()["message"]


def test_the_review_step_says_what_the_disks_hold():
    from django.template.loader import render_to_string

    def sentence(disk_mib, disk_copy_s, unwritten=0.0):
        prediction = {"available": True, "plan": {"verdict": "converges"}, "disk_mib": disk_mib}
        prediction.update(disk_copy_s=disk_copy_s, disk_unwritten_mib=unwritten)
        return render_to_string("migrator/_prediction.html", {"prediction": prediction})

    # A fresh image holds a few KiB: no "0 MiB, about 0 s".
    assert "less than 1 MiB of data: almost no time before" in sentence(0.3, 0.0)
    assert "hold 96 MiB of data: about 3 s before the memory starts" in sentence(96.0, 3.0)
    assert "hold 8 MiB of data: about 0.5 s" in sentence(8.0, 0.5)
    # Capped, the never-written rest counts too: the lab's db-local (64 MiB, empty) at 16 MiB/s.
    capped = sentence(0.3, 4.0, unwritten=63.7)
    assert "less than 1 MiB of data, and 64 MiB never written" in capped and "about 4 s before" in capped
    assert 'id="disk-copy"' not in sentence(0.0, 0.0)
