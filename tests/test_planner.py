"""Pure tests for migrator.planner (no Django, no database).

Run from the project root:
    .venv/bin/python -m pytest -p no:django -p no:cacheprovider tests/test_planner.py
The expected numbers are computed by hand in the comments.
"""

import json
from dataclasses import replace

import pytest

from migrator.planning.planner import (
    PlanInput,
    Verdict,
    dirtied_mib,
    disk_copy_s,
    evaluate,
    fit_dirty_curve,
    learned_bandwidth,
    plan,
    predicted_range,
    recommend,
    widened_for_compression,
    widened_for_unknown_zero_pages,
)

RANK = {"will_not_converge": 0, "converges_with_help": 1, "converges": 2}

# 256 MiB guest dirtying 32 MiB/s behind an 8 MiB/s cap: pass 1 takes 32 s and
# dirties min(256, 32*32) = 256 MiB, so every pass resends all of RAM.
STUCK = PlanInput(memory_mib=256, dirty_rate_mib_s=32, bandwidth_mib_s=8)


def test_it_sends_an_idle_guest_in_one_pass():
    p = plan(PlanInput(memory_mib=256, dirty_rate_mib_s=0, bandwidth_mib_s=100))
    assert p.verdict == Verdict.CONVERGES
    assert p.iterations == 1
    # setup 0.3 s + 256/100 = 2.56 s + switch-over overhead 0.05 s
    assert p.total_time_s == pytest.approx(0.3 + 2.56 + 0.05)
    assert p.downtime_ms == pytest.approx(50)
    assert p.data_sent_mib == pytest.approx(256)
    assert p.iterations_detail[0].duration_s == pytest.approx(2.56)
    assert p.recommendations == ()
    assert p.mode == "precopy"


def test_it_calibrates_setup_and_overhead():
    p = plan(PlanInput(256, 0, 100, setup_s=1.0, switchover_overhead_ms=200))
    assert p.total_time_s == pytest.approx(1.0 + 2.56 + 0.2)
    assert p.downtime_ms == pytest.approx(200)


def test_it_copies_local_disks_before_the_first_pass():
    # 64 MiB of disk data at the 16 MiB/s cap: 4 s before memory starts, then
    # 256 MiB of an idle guest's memory at 16 MiB/s: 16 s.
    p = plan(PlanInput(memory_mib=256, dirty_rate_mib_s=0, bandwidth_mib_s=16, disk_mib=64))
    assert p.total_time_s == pytest.approx(0.3 + 4.0 + 16.0 + 0.05)
    assert p.downtime_ms == pytest.approx(50)
    assert p.data_sent_mib == pytest.approx(256)  # memory only: the disk data is counted apart


def test_a_capped_copy_sends_the_disks_unwritten_blocks_too():
    # 64 MiB of data and 448 MiB never written: at a 16 MiB/s cap the mirror
    # counts all 512 MiB (32 s); uncapped, at a 16 MiB/s link, only the data (4 s).
    capped = PlanInput(256, 0, 16, disk_mib=64, disk_unwritten_mib=448)
    assert disk_copy_s(capped) == pytest.approx(32.0)
    assert plan(capped).total_time_s == pytest.approx(0.3 + 32.0 + 16.0 + 0.05)
    assert disk_copy_s(replace(capped, bandwidth_is_cap=False)) == pytest.approx(4.0)


def test_a_timeout_counts_the_disk_copy():
    # The 10 s timeout fires 5.7 s into the memory: 4.3 s went to setup and the disks.
    p = plan(PlanInput(256, 0, 16, disk_mib=64, timeout_s=10, timeout_action="abort"))
    assert p.verdict == Verdict.WILL_NOT_CONVERGE and p.total_time_s == pytest.approx(10)


def test_it_never_converges_when_dirty_rate_exceeds_bandwidth():
    p = plan(PlanInput(memory_mib=2048, dirty_rate_mib_s=150, bandwidth_mib_s=100))
    assert p.verdict == Verdict.WILL_NOT_CONVERGE
    assert p.downtime_ms is None
    assert p.throttle_pct_final == 0
    # pass 1 dirties min(2048, 150*20.48) = 2048 MiB, pass 2 the same: stuck.
    assert p.iterations_detail[0].dirtied_mib == pytest.approx(2048)
    assert "does not converge" in p.reason


def test_it_needs_auto_converge_under_a_tight_cap():
    p = plan(STUCK)
    assert p.verdict == Verdict.WILL_NOT_CONVERGE
    params = {r.parameter for r in p.recommendations}
    assert {"auto_converge", "max_downtime_ms"} <= params

    helped = plan(replace(STUCK, auto_converge=True))
    assert helped.verdict == Verdict.CONVERGES_WITH_HELP
    # the throttle has to pass 75 %: the dirty/send ratio is 4 * (1 - p)
    assert helped.throttle_pct_final >= 80
    assert helped.downtime_ms <= 300 + 50


def test_it_throttles_on_every_second_trigger_like_qemu():
    p = plan(replace(STUCK, auto_converge=True))
    steps = [d.throttle_pct for d in p.iterations_detail]
    # dirty_rate_high_cnt must reach 2 before each step: 20 % from pass 3, +10 every 2 passes
    assert steps[:9] == [0, 0, 20, 20, 30, 30, 40, 40, 50]
    # at 90 % the guest dirties 0.4x what is sent (< 50 % threshold): no further step
    assert max(steps) == 90


def test_it_sets_the_smallest_nice_downtime_that_converges():
    rec = next(r for r in plan(STUCK).recommendations if r.parameter == "max_downtime_ms")
    # pending stays 256 MiB; 256 MiB / 8 MiB/s = 32 s is exactly enough
    assert rec.value == 32000
    assert plan(replace(STUCK, max_downtime_ms=31900)).verdict == Verdict.WILL_NOT_CONVERGE


def test_it_switches_over_exactly_at_the_boundary():
    # pass 1: 256/128 = 2 s, dirties 16*2 = 32 MiB; threshold 128 MiB/s * 0.25 s = 32 MiB
    at = plan(PlanInput(256, 16, 128, max_downtime_ms=250))
    assert at.iterations == 1
    assert at.downtime_ms == pytest.approx(32 / 128 * 1000 + 50)
    assert at.total_time_s == pytest.approx(0.3 + 2 + 0.25 + 0.05)
    assert at.data_sent_mib == pytest.approx(256 + 32)
    # a hair more dirtying needs a second pass: 33 MiB -> 33/128 s -> 16.5*33/128 MiB
    above = plan(PlanInput(256, 16.5, 128, max_downtime_ms=250))
    assert above.iterations == 2
    assert above.iterations_detail[1].dirtied_mib == pytest.approx(16.5 * 33 / 128)


def test_it_pauses_the_guest_for_long_on_suspend_timeout():
    p = plan(replace(STUCK, timeout_s=60, timeout_action="suspend"))
    assert p.verdict == Verdict.CONVERGES_WITH_HELP
    assert p.mode == "suspend"
    # at 60 s all 256 MiB are pending again: 256/8 = 32 s paused + 0.05 s
    assert p.downtime_ms == pytest.approx(32050)
    assert p.total_time_s == pytest.approx(60 + 32.05)
    # virsh's default action for a timeout is suspend too
    assert plan(replace(STUCK, timeout_s=60)).mode == "suspend"


def test_it_fails_on_abort_timeout():
    p = plan(replace(STUCK, timeout_s=60, timeout_action="abort"))
    assert p.verdict == Verdict.WILL_NOT_CONVERGE
    assert p.mode == "abort"
    assert p.total_time_s == pytest.approx(60)
    assert p.downtime_ms is None


def test_it_keeps_postcopy_downtime_small():
    p = plan(replace(STUCK, postcopy=True))
    assert p.verdict == Verdict.CONVERGES_WITH_HELP
    assert p.mode == "postcopy"
    assert p.iterations == 1
    assert p.downtime_ms == pytest.approx(50)
    # setup + first pass 32 s + overhead + remaining 256 MiB pulled at 8 MiB/s
    assert p.total_time_s == pytest.approx(0.3 + 32 + 0.05 + 32)
    at_timeout = plan(replace(STUCK, timeout_s=60, timeout_action="postcopy"))
    assert at_timeout.mode == "postcopy"
    assert at_timeout.downtime_ms == pytest.approx(50)
    assert at_timeout.total_time_s == pytest.approx(60 + 0.05 + 32)


def test_it_does_not_use_postcopy_when_precopy_finishes_in_one_pass():
    p = plan(PlanInput(256, 0, 100, postcopy=True))
    assert p.verdict == Verdict.CONVERGES
    assert p.mode == "precopy"


def test_it_interpolates_the_dirty_rate_curve():
    inp = PlanInput(4096, 0, 100, dirty_rate_curve=[(1, 100), (10, 50)])
    # points D(1) = 100, D(10) = 500; linear in between, from the origin before
    assert dirtied_mib(inp, 0.5) == pytest.approx(50)
    assert dirtied_mib(inp, 5.5) == pytest.approx(100 + 4.5 / 9 * 400)
    # beyond the longest window: slope of the last segment, 400/9 MiB/s
    assert dirtied_mib(inp, 20) == pytest.approx(500 + 10 * 400 / 9)
    # a 50 % throttle halves the guest's running time: D(11 * 0.5) = D(5.5)
    assert dirtied_mib(inp, 11, throttle_pct=50) == pytest.approx(300)
    assert dirtied_mib(replace(inp, memory_mib=512), 20) == pytest.approx(512)
    # one rate only: linear
    assert dirtied_mib(PlanInput(1024, 10, 100), 3) == pytest.approx(30)


def _flat(points):
    return [v for point in points for v in point]


def test_the_curve_fit_averages_repeated_windows():
    # D(1) = mean(30, 34) = 32, D(2) = mean(2*20, 2*24) = 44, D(4) = 4*11 = 44
    fit = fit_dirty_curve(((1, 30), (2, 20), (4, 11), (1, 34), (2, 24)))
    assert _flat(fit) == pytest.approx(_flat([(0, 0), (1, 32), (2, 44), (4, 44)]))


def test_the_curve_fit_pools_readings_that_shrink_with_the_window():
    # D = 34, 32, 16: unique dirty memory cannot shrink, so all three pool to their
    # mean, 82 / 3; the flat middle point drops out of the hull.
    fit = fit_dirty_curve(((1, 34), (2, 16), (4, 4)))
    assert _flat(fit) == pytest.approx(_flat([(0, 0), (1, 82 / 3), (4, 82 / 3)]))


def test_the_curve_fit_bridges_a_short_window_that_missed_a_burst():
    # D = 0, 24, 24: a concave D runs on the chord from the origin to (2, 24), so
    # 1 s of guest time dirties 12 MiB, not 0.
    inp = PlanInput(256, 0, 32, dirty_rate_curve=[(1, 0), (2, 12), (4, 6)])
    assert _flat(fit_dirty_curve(inp.dirty_rate_curve)) == pytest.approx(_flat([(0, 0), (2, 24), (4, 24)]))
    assert dirtied_mib(inp, 1) == pytest.approx(12)
    assert dirtied_mib(inp, 10) == pytest.approx(24)


def test_a_migration_that_converges_only_at_the_measured_rate_is_too_close_to_call():
    # 28 MiB/s against 32 MiB/s: every pass is 7/8 of the last, 56 -> 9.6 MiB in 14 passes.
    # With the 20 % margin the guest dirties 33.6 MiB/s, faster than the copy: a stall.
    inp = PlanInput(memory_mib=64, dirty_rate_mib_s=28, bandwidth_mib_s=32)
    assert evaluate(replace(inp, rate_margin=0)).verdict == Verdict.CONVERGES
    fragile = plan(inp)
    assert fragile.verdict == Verdict.WILL_NOT_CONVERGE
    assert fragile.reason.startswith("Too close to call")
    assert fragile.downtime_ms is None
    # every recommendation converges with the margin too
    assert fragile.recommendations
    for rec in fragile.recommendations:
        assert evaluate(replace(inp, **rec.changes)).verdict != Verdict.WILL_NOT_CONVERGE
    # far from the boundary the margin changes nothing
    easy = PlanInput(memory_mib=64, dirty_rate_mib_s=8, bandwidth_mib_s=32)
    assert plan(easy) == plan(replace(easy, rate_margin=0))


def test_it_converges_faster_with_a_saturating_curve():
    curve = PlanInput(1024, 20, 100, dirty_rate_curve=[(1, 20), (10, 5)])
    linear = replace(curve, dirty_rate_curve=())
    # curve: pass 1 (10.24 s) dirties 50 + 30/9*0.24 = 50.8 MiB, pass 2 (0.508 s) 10.16 MiB
    assert plan(curve).iterations == 2
    # linear: 204.8 MiB -> 40.96 MiB -> 8.19 MiB, one pass more
    assert plan(linear).iterations == 3


def test_it_reverifies_every_recommendation():
    cases = [
        STUCK,
        PlanInput(2048, 150, 100),
        replace(STUCK, timeout_s=60, timeout_action="abort"),
        replace(STUCK, auto_converge=True),
    ]
    for inp in cases:
        base = plan(inp)
        assert base.recommendations, inp
        for rec in base.recommendations:
            assert rec.explanation.endswith(".")
            fixed = plan(replace(inp, **rec.changes))
            assert RANK[fixed.verdict] > RANK[base.verdict], (inp, rec)


def test_it_does_not_trade_postcopy_for_a_long_pause():
    recs = recommend(replace(STUCK, postcopy=True))
    assert "max_downtime_ms" not in {r.parameter for r in recs}
    for rec in recs:
        assert plan(replace(STUCK, postcopy=True, **rec.changes)).downtime_ms <= 350


def test_it_recommends_nothing_when_it_converges():
    assert recommend(PlanInput(256, 1, 100)) == []


def test_it_gives_up_after_the_iteration_cap():
    # ratio 0.99 per pass: shrinking, but far from 3 MiB after 30 passes
    p = plan(PlanInput(1024, 99, 100, max_downtime_ms=30))
    assert p.verdict == Verdict.WILL_NOT_CONVERGE
    assert p.iterations == 30


def test_it_models_compression_and_multifd():
    base = PlanInput(256, 0, 100)
    zstd = plan(replace(base, compression="zstd"))
    assert zstd.iterations_detail[0].duration_s == pytest.approx(256 / 180)
    # xbzrle only helps pages sent before, so the first pass is unchanged
    xb = plan(replace(base, compression="xbzrle"))
    assert xb.iterations_detail[0].duration_s == pytest.approx(2.56)
    unknown = plan(replace(base, compression="lz4"))
    assert unknown.iterations_detail[0].duration_s == pytest.approx(2.56)
    # a cap is a cap; on a measured link 4 channels give +15 %
    capped = plan(replace(base, parallel_connections=4))
    assert capped.iterations_detail[0].duration_s == pytest.approx(2.56)
    link = plan(replace(base, parallel_connections=4, bandwidth_is_cap=False))
    assert link.iterations_detail[0].duration_s == pytest.approx(256 / 115)
    many = plan(replace(base, parallel_connections=64, bandwidth_is_cap=False))
    assert many.iterations_detail[0].duration_s == pytest.approx(256 / 125)


def test_compressing_and_sending_take_turns_once_the_threads_pace_is_known():
    # 160 MiB of pages, 1.6 page bytes per wire byte, 32 MiB/s cap, threads 60 MiB/s:
    # each MiB costs 1/60 s to compress plus 1/(32 x 1.6) s to send.
    base = PlanInput(160, 0, 32, compression="mt", compression_ratio=1.6, compress_mib_s=60)
    first = plan(base).iterations_detail[0]
    assert first.duration_s == pytest.approx(160 * (1 / 60 + 1 / 51.2))
    # Zero pages cost nothing on the wire, but pass through the threads too.
    half_zero = plan(replace(base, memory_mib=320, zero_page_fraction=0.5)).iterations_detail[0]
    assert half_zero.duration_s == pytest.approx(first.duration_s + 160 / 60)
    # Until the threads' pace is measured they cost nothing, and the ratio is the learned one.
    assert plan(replace(base, compress_mib_s=None)).iterations_detail[0].duration_s == pytest.approx(160 / 51.2)
    # xbzrle is no stream compressor: neither figure applies to it.
    xb = plan(replace(base, compression="xbzrle")).iterations_detail[0]
    assert xb.duration_s == pytest.approx(160 / 32)


def test_slow_compression_threads_lower_the_switch_over_threshold():
    # QEMU measures the wire: threads that hold it to 16 of 32 MiB/s halve the pages
    # that fit in the downtime budget (16 MiB/s x 1 s = 16 MiB, not 32).
    slow = PlanInput(64, 20, 32, max_downtime_ms=1000, compression="mt", compression_ratio=1.0, compress_mib_s=32)
    result = plan(slow)
    rate = 1 / (1 / 32 + 1 / 32)
    assert result.iterations_detail[0].duration_s == pytest.approx(64 / rate)
    assert result.verdict is Verdict.WILL_NOT_CONVERGE, "20 MiB/s of dirtying outruns 16 MiB/s of pages"


def test_an_unmeasured_compressor_widens_the_range_to_no_gain():
    inp = PlanInput(160, 0, 32, compression="mt")
    nominal = plan(inp)
    spread = predicted_range(inp, nominal)
    assert spread.high_s == pytest.approx(nominal.total_time_s)
    wide = widened_for_compression(inp, spread, 1.3)
    # No gain: 160 MiB at 32 MiB/s, times the residuals' p90.
    assert wide.high_s == pytest.approx(plan(replace(inp, compression_ratio=1.0)).total_time_s * 1.3)
    assert wide.low_s == spread.low_s and not wide.too_close
    # A guest that converges only with the gain is too close to call until the pace is known.
    hot = PlanInput(256, 36, 32, compression="mt", compression_ratio=1.6)
    hot_spread = predicted_range(hot, plan(hot))
    assert hot_spread.high_s is not None
    hot_wide = widened_for_compression(hot, hot_spread, 1.3)
    assert hot_wide.high_s is None and hot_wide.too_close


def test_unknown_zero_pages_widen_the_range_down_to_a_mostly_empty_guest():
    # An idle 256 MiB guest at 100 MiB/s: 2.56 s of memory assumed all data.
    # Finding 95 % of it zero leaves 12.8 MiB: 0.128 s, plus setup and switch-over.
    inp = PlanInput(256, 0, 100)
    spread = predicted_range(inp, plan(inp))
    assert spread.low_s == pytest.approx(0.3 + 2.56 + 0.05)
    wide = widened_for_unknown_zero_pages(inp, spread, 0.9, 0.95)
    assert wide.low_s == pytest.approx((0.3 + 0.128 + 0.05) * 0.9)
    assert (wide.estimate_s, wide.high_s, wide.too_close) == (spread.estimate_s, spread.high_s, spread.too_close)
    # A guest that does not converge at the low end keeps its open range.
    stuck = predicted_range(STUCK, plan(STUCK))
    assert widened_for_unknown_zero_pages(STUCK, stuck, 0.9, 0.95) == stuck


def test_it_skips_zero_pages_in_the_first_pass():
    p = plan(PlanInput(256, 0, 100, zero_page_fraction=0.5))
    assert p.iterations_detail[0].sent_mib == pytest.approx(128)
    assert p.total_time_s == pytest.approx(0.3 + 1.28 + 0.05)


def test_it_learns_bandwidth_robustly():
    assert learned_bandwidth([100, 110, 5000, 90, 105]) == pytest.approx(105)
    assert learned_bandwidth([1, 1, 1, 100, 110, 90, 105, 95]) == pytest.approx(100)
    assert learned_bandwidth([0, -3, float("nan")]) is None
    assert learned_bandwidth([]) is None


def test_it_serialises_to_json():
    data = json.loads(json.dumps(plan(STUCK).as_dict()))
    assert data["verdict"] == "will_not_converge"
    assert data["iterations_detail"][0]["sent_mib"] == 256
    assert {"parameter", "value", "explanation", "changes"} <= set(data["recommendations"][0])


def test_it_rejects_nonsense_input():
    with pytest.raises(ValueError):
        PlanInput(0, 1, 100)
    with pytest.raises(ValueError):
        PlanInput(256, 1, 100, timeout_action="reboot")
    with pytest.raises(ValueError):
        PlanInput(256, 1, 100, dirty_rate_curve=[(0, 5)])


def test_it_copies_the_last_pages_at_link_speed_when_a_cap_is_set():
    capped = PlanInput(memory_mib=256, dirty_rate_mib_s=2, bandwidth_mib_s=16, max_downtime_ms=300)
    lifted = replace(capped, final_copy_bandwidth_mib_s=160)
    slow, fast = plan(capped), plan(lifted)
    assert slow.iterations == fast.iterations, "the cap still sets the switch-over threshold"
    pending_ms_slow = slow.downtime_ms - capped.switchover_overhead_ms
    pending_ms_fast = fast.downtime_ms - lifted.switchover_overhead_ms
    assert pending_ms_fast == pytest.approx(pending_ms_slow / 10, rel=1e-6)
