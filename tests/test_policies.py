"""Migration policies: each preset's parameters, the completion timeout per
GiB pinned to worked examples, the form's refusals in plain words, the
review step's table of every policy's outcome, the planner's progress
timeout, the monitor's progress watch and `migrate_vm --policy`."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from hosts import gateway
from hosts.gateway.migration import PROGRESS_MIN_FALL_BYTES, ProgressWatch
from hosts.models import Host
from migrator import policies
from migrator.audit.models import AuditEvent
from migrator.forms import MigrationForm
from migrator.models import DirtyRateMeasurement, Migration
from migrator.parameters import MigrationParameters, timeout_fired_words
from migrator.planning import planner
from migrator.wizard import _post_items

from .test_migration_model import make_migration

MIB = 2**20
GIB = 2**30
NEW = "migrator:new"


# ------------------------------------------------------------ presets


def base(**changes) -> MigrationParameters:
    """What an operator entered: custom values, the policies' settings and a transport."""
    values = {
        "max_downtime_ms": 500,
        "bandwidth_mib_s": 20,
        "timeout_s": 60,
        "timeout_action": "suspend",
        "postcopy_after_s": 30,
        "completion_timeout_per_gib_s": 800,
        "progress_timeout_s": 150,
        "tls": True,
    }
    values.update(changes)
    return MigrationParameters(**values)


MEMORY_512_MIB_KIB = 512 * 1024


def test_minimal_downtime_runs_with_qemus_defaults_and_aborts_at_the_completion_timeout():
    p = policies.get("minimal-downtime").parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert p.policy == "minimal-downtime"
    assert (p.max_downtime_ms, p.auto_converge, p.allow_postcopy) == (None, False, False)
    assert (p.timeout_s, p.timeout_action, p.completion_timeout_s) == (400, "abort", 400)
    assert p.progress_timeout_s == 150
    assert p.postcopy_after_s is None, "N belongs to post-copy after N s"
    assert (p.bandwidth_mib_s, p.tls) == (20, True), "the transport stays the operator's"
    spec = p.to_spec(Host(name="b", uri="qemu+tcp://b/system"))
    assert (spec.timeout_s, spec.timeout_action, spec.progress_timeout_s) == (400, "abort", 150)
    assert not spec.flags() & gateway.MigrateFlag.POSTCOPY


def test_postcopy_after_n_switches_at_n_or_at_the_completion_timeout_if_sooner():
    policy = policies.get(policies.POSTCOPY_AFTER)
    p = policy.parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert (p.timeout_s, p.timeout_action, p.allow_postcopy, p.postcopy_after_s) == (30, "postcopy", True, 30)
    assert p.to_spec(Host(name="b", uri="qemu+tcp://b/system")).flags() & gateway.MigrateFlag.POSTCOPY
    # 150 s per GiB of 100 MiB is 14.6 s: sooner than N = 30, so it switches at 15 s.
    sooner = policy.parameters(base(completion_timeout_per_gib_s=150), 100 * 1024, 0)
    assert (sooner.timeout_s, sooner.completion_timeout_s, sooner.postcopy_after_s) == (15, 15, 30)
    assert policy.parameters(base(), MEMORY_512_MIB_KIB, 0, postcopy_after_s=45).timeout_s == 45


def test_suspend_if_needed_auto_converges_then_suspends():
    p = policies.get(policies.SUSPEND_IF_NEEDED).parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert (p.auto_converge, p.allow_postcopy, p.max_downtime_ms) == (True, False, None)
    assert (p.timeout_s, p.timeout_action) == (400, "suspend")
    # With the completion timeout off, the progress timeout alone suspends.
    p = policies.get(policies.SUSPEND_IF_NEEDED).parameters(
        base(), MEMORY_512_MIB_KIB, 0, completion_timeout_per_gib_s=None
    )
    assert (p.timeout_s, p.timeout_action, p.progress_timeout_s, p.effective_timeout_action) == (
        None,
        "suspend",
        150,
        "suspend",
    )


def test_custom_keeps_the_operators_values_and_takes_the_shorter_timeout():
    p = policies.get("custom").parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert (p.max_downtime_ms, p.timeout_s, p.timeout_action) == (500, 60, "suspend")
    p = policies.get("custom").parameters(base(timeout_s=None, timeout_action="abort"), MEMORY_512_MIB_KIB, 0)
    assert (p.timeout_s, p.timeout_action) == (400, "abort")
    bare = policies.get("custom").parameters(
        base(timeout_s=None, completion_timeout_per_gib_s=None, progress_timeout_s=None), MEMORY_512_MIB_KIB, 0
    )
    assert (bare.timeout_s, bare.timeout_action, bare.effective_timeout_action) == (None, "", "")


def test_applying_a_policy_twice_changes_nothing():
    for policy in policies.POLICIES.values():
        once = policy.parameters(base(), MEMORY_512_MIB_KIB, 0)
        assert policy.parameters(once, MEMORY_512_MIB_KIB, 0) == once, policy.name


@pytest.mark.parametrize(
    ("per_gib", "memory_kib", "disk_bytes", "expected"),
    [
        (800, 512 * 1024, 0, 400),  # Nova's default: 800 s per GiB of a 512 MiB VM
        (800, 256 * 1024, 0, 200),  # the lab's cache-hot
        (150, 1024 * 1024, 10 * GIB, 1650),  # KubeVirt's 150 s: 1 GiB of memory + a 10 GiB copied disk
        (800, 256 * 1024, 64 * MIB, 250),  # 256 MiB + 64 MiB = 0.3125 GiB
        (150, 100 * 1024, 0, 15),  # 14.65 s, rounded up to a whole second
        (1, 1024, 0, 1),  # never below 1 s
        (None, 512 * 1024, 0, None),  # none
    ],
)
def test_the_completion_timeout_is_per_gib_of_memory_and_copied_disk(per_gib, memory_kib, disk_bytes, expected):
    assert policies.completion_timeout_s(per_gib, memory_kib, disk_bytes) == expected


def test_the_copied_disks_come_from_the_disk_plan():
    plan = (
        {"target": "vda", "capacity_bytes": 64 * MIB},
        {"target": "vdb", "capacity_bytes": 1 * GIB},
    )
    p = base(disks=("vda",), disk_plan=plan)
    assert policies.copied_disk_bytes(p) == 64 * MIB
    assert policies.get("minimal-downtime").parameters(p, 256 * 1024).completion_timeout_s == 250


def test_an_unknown_policy_is_refused_by_name():
    with pytest.raises(policies.UnknownPolicy) as refused:
        policies.get("fastest")
    message = str(refused.value)
    assert "no migration policy named 'fastest'" in message
    assert "minimal-downtime, postcopy-after, suspend-if-needed, custom" in message
    assert [name for name, _label in policies.CHOICES] == list(policies.POLICIES)


# ------------------------------------------------------------ the record


def test_an_old_record_without_policy_reads_as_custom_without_the_new_timeouts():
    old = {"max_downtime_ms": 500, "timeout_s": 60, "timeout_action": "suspend", "disks": []}
    p = MigrationParameters.from_record(old)
    assert (p.policy, p.completion_timeout_per_gib_s, p.progress_timeout_s, p.postcopy_after_s) == (
        "custom",
        None,
        None,
        None,
    )
    assert p.to_spec(Host(name="b", uri="qemu+tcp://b/system")).progress_timeout_s is None
    rows = dict(policies.describe(old))
    assert rows["Policy"] == "Custom"
    assert rows["Timeout"] == "after 60 s, suspend the VM so the copy finishes"
    assert (rows["Completion timeout"], rows["Progress timeout"]) == ("none", "none")
    assert MigrationParameters.from_record({**old, "policy": None}).policy == "custom"


def test_the_record_and_its_words_show_the_policy():
    p = policies.get(policies.POSTCOPY_AFTER).parameters(base(), MEMORY_512_MIB_KIB, 0)
    record = p.as_record()
    assert record["policy"] == "postcopy-after" and record["postcopy_after_s"] == 30
    assert MigrationParameters.from_record(record) == p
    rows = dict(policies.describe(record))
    assert rows["Policy"] == "Post-copy after N s (N = 30 s)"
    assert rows["Timeout"] == "after 30 s, switch to post-copy"
    assert rows["Completion timeout"] == (
        "800 s per GiB of memory and copied disk: 400 s for this VM, then switch to post-copy"
    )
    assert rows["Progress timeout"] == "when the remaining data has not fallen for 150 s, switch to post-copy"
    assert dict(policies.describe({**record, "policy": "gone"}))["Policy"] == "gone"


def test_what_fired_is_said_in_plain_words():
    p = policies.get("minimal-downtime").parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert timeout_fired_words("completion", "abort", p) == (
        "The completion timeout fired (400 s had passed: 800 s per GiB of memory and copied disk): "
        "the migration was aborted; the VM stays on the source."
    )
    assert timeout_fired_words("progress", "suspend", p) == (
        "The progress timeout fired (the remaining data had not fallen for 150 s): "
        "the VM was suspended so the copy finishes."
    )
    q = policies.get(policies.POSTCOPY_AFTER).parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert timeout_fired_words("completion", "postcopy", q) == (
        "The completion timeout fired (30 s had passed): the migration switched to post-copy."
    )


# ------------------------------------------------------------ the form


@pytest.fixture
def vm(two_hosts):
    return two_hosts[0].vms.get(name="test")


def form_for(vm, destination, **overrides) -> MigrationForm:
    form = MigrationForm(MigrationForm.defaults(vm, destination, **overrides), vm=vm, run_prechecks=False)
    form.is_valid()
    return form


def test_the_form_offers_custom_with_nova_and_kubevirt_like_defaults(vm, two_hosts):
    form = form_for(vm, two_hosts[1])
    assert form.is_valid(), form.errors
    p = form.parameters()
    assert p.policy == "custom" and p.max_downtime_ms == 500
    assert (p.completion_timeout_per_gib_s, p.progress_timeout_s) == (800, 150)
    expected = policies.completion_timeout_s(800, vm.memory_kib, policies.copied_disk_bytes(p))
    assert p.timeout_s == p.completion_timeout_s == expected
    assert p.timeout_action == "suspend", "custom's timeouts take its timeout action"


@pytest.mark.parametrize("name", list(policies.POLICIES))
def test_the_form_applies_each_policy(vm, two_hosts, name):
    form = form_for(vm, two_hosts[1], policy=name)
    assert form.is_valid(), form.errors
    p = form.parameters()
    assert p == policies.get(name).parameters(form.raw_parameters(), vm.memory_kib)
    assert p.policy == name


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"policy": "fastest"},
            "policy",
            "There is no migration policy named fastest; choose one of minimal-downtime, postcopy-after, "
            "suspend-if-needed, custom.",
        ),
        (
            {"policy": "postcopy-after", "postcopy_after_s": None},
            "postcopy_after_s",
            "Post-copy after N s needs N: the seconds of pre-copy before the switch (e.g. 30).",
        ),
        (
            {"policy": "postcopy-after", "postcopy_after_s": 0},
            "postcopy_after_s",
            "Post-copy starts after at least 1 s of pre-copy.",
        ),
        (
            {"policy": "suspend-if-needed", "completion_timeout_per_gib_s": None, "progress_timeout_s": None},
            "completion_timeout_per_gib_s",
            "Suspend if needed suspends the VM at the completion or the progress timeout: set at least one.",
        ),
        (
            {"completion_timeout_per_gib_s": 0},
            "completion_timeout_per_gib_s",
            "The completion timeout is at least 1 s per GiB; leave it empty for none.",
        ),
        (
            {"progress_timeout_s": 90000},
            "progress_timeout_s",
            "The progress timeout is at most 86400 s (a day); leave it empty for none.",
        ),
        (
            {"timeout_action": ""},
            "timeout_action",
            "Choose what happens when a timeout is reached.",
        ),
        (
            {"policy": "postcopy-after", "compression": "mt"},
            "compression",
            "QEMU cannot combine post-copy with compression; choose one of the two.",
        ),
        (
            {"policy": "postcopy-after", "parallel_connections": 2},
            "parallel_connections",
            "QEMU cannot combine post-copy with parallel connections; choose one of the two.",
        ),
        (
            {"start_at": "tomorrow at noon"},
            "start_at",
            "Write the start time as YYYY-MM-DD HH:MM in the server's time zone",
        ),
    ],
)
def test_the_form_refuses_in_plain_words(vm, two_hosts, overrides, field, message):
    form = MigrationForm(MigrationForm.defaults(vm, two_hosts[1], **overrides), vm=vm, run_prechecks=False)
    form.fields["compression"].choices = [("", "None"), ("mt", "mt")]
    assert not form.is_valid()
    text = " ".join(form.errors[field])
    assert message in text, form.errors


def test_a_preset_ignores_the_custom_timeout_action(vm, two_hosts):
    form = form_for(vm, two_hosts[1], policy="minimal-downtime", timeout_action="")
    assert form.is_valid(), form.errors
    assert form.parameters().timeout_action == "abort"


def test_start_at_must_be_in_the_future_and_within_30_days(vm, two_hosts):
    now = timezone.localtime()
    past = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    form = form_for(vm, two_hosts[1], start_at=past)
    assert "is in the past; choose a later time, or leave it empty to start now." in " ".join(form.errors["start_at"])
    far = (now + timedelta(days=31)).strftime("%Y-%m-%d %H:%M")
    form = form_for(vm, two_hosts[1], start_at=far)
    assert "is more than 30 days ahead; choose a time before" in " ".join(form.errors["start_at"])
    soon = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    form = form_for(vm, two_hosts[1], start_at=soon.strftime("%Y-%m-%dT%H:%M"))
    assert form.is_valid(), form.errors
    assert form.scheduled_start == soon and timezone.is_aware(form.scheduled_start)
    assert ("start_at", soon.strftime("%Y-%m-%dT%H:%M")) in _post_items(form, {})
    assert form_for(vm, two_hosts[1]).scheduled_start is None


def test_the_parameters_step_offers_the_policies(login, vm, two_hosts):
    page = login("operator").get(reverse(NEW), {"vm": vm.pk, "destination": two_hosts[1].pk}).content.decode()
    for name in policies.POLICIES:
        assert f'value="{name}"' in page
    assert 'value="custom" checked' in page
    assert 'name="postcopy_after_s"' in page and 'name="completion_timeout_per_gib_s"' in page
    assert 'name="progress_timeout_s"' in page and 'name="start_at"' in page
    assert 'id="custom-fields"' in page and "Minimal downtime" in page


# ------------------------------------------------------------ the planner and the review step


def hot_plan_input(**changes) -> planner.PlanInput:
    """The lab's cache-hot: 256 MiB rewriting 32 MiB a second, over 8 MiB/s."""
    values = {"memory_mib": 256, "dirty_rate_mib_s": 32, "bandwidth_mib_s": 8, "rate_margin": 0.0}
    values.update(changes)
    return planner.PlanInput(**values)


def test_the_planner_models_the_progress_timeout():
    plain = planner.evaluate(hot_plan_input())
    assert plain.mode == "none", "it does not converge"
    aborted = planner.evaluate(hot_plan_input(progress_timeout_s=20, timeout_action="abort"))
    assert (aborted.mode, aborted.timeout_fired) == ("abort", "progress")
    # The remaining data last fell at the end of the first pass (256 MiB at 8 MiB/s after 0.3 s set-up).
    first_pass_end = 0.3 + 256 / 8
    assert aborted.timeout_at_s == pytest.approx(first_pass_end + 20, abs=1)
    assert "progress timeout" in aborted.reason
    # A completion timeout that comes first wins.
    sooner = planner.evaluate(hot_plan_input(progress_timeout_s=20, timeout_s=40, timeout_action="abort"))
    assert (sooner.timeout_fired, sooner.timeout_at_s) == ("completion", 40)
    assert sooner.as_dict()["timeout_fired"] == "completion"


def measure(vm, *rates, window_s=1):
    for rate in rates:
        DirtyRateMeasurement.objects.create(
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            host=vm.host,
            host_name=vm.host.name,
            series="s1",
            window_s=window_s,
            dirty_rate_mib_s=rate,
        )


def test_the_review_table_predicts_every_policy(vm, two_hosts):
    vm.memory_kib = 256 * 1024  # like the lab's cache-hot
    vm.save()
    measure(vm, 32)
    raw = base(bandwidth_mib_s=8, progress_timeout_s=None, disks=(), disk_plan=(), policy="suspend-if-needed")
    table = policies.predict_all(vm, two_hosts[1], raw)
    assert table["available"]
    rows = {row["name"]: row for row in table["rows"]}
    assert list(rows) == list(policies.POLICIES)
    assert [row["name"] for row in table["rows"] if row["chosen"]] == ["suspend-if-needed"]
    assert rows["minimal-downtime"]["outcome"] == "aborts at 200 s; the VM stays on the source"
    assert rows["minimal-downtime"]["total_time_s"] == 200 and rows["minimal-downtime"]["downtime_ms"] is None
    assert rows["postcopy-after"]["outcome"] == "switches to post-copy at 30 s"
    assert rows["postcopy-after"]["downtime_ms"] < 1000
    assert rows["custom"]["outcome"].startswith("suspends the VM at 60 s for about")
    assert rows["suspend-if-needed"]["mode"] in ("precopy", "suspend")
    # With a progress timeout of 20 s the minimal-downtime policy gives up sooner.
    table = policies.predict_all(vm, two_hosts[1], raw.replace(progress_timeout_s=20))
    minimal = next(row for row in table["rows"] if row["name"] == "minimal-downtime")
    assert minimal["timeout_fired"] == "progress"
    assert minimal["outcome"].startswith("aborts at ") and minimal["outcome"].endswith(
        "(progress timeout); the VM stays on the source"
    )


def test_the_review_table_waits_for_a_measurement(vm, two_hosts):
    table = policies.predict_all(vm, two_hosts[1], base())
    assert table == {"available": False, "reason": table["reason"], "rows": []}
    assert "dirty page rate" in table["reason"]


def test_the_review_step_shows_each_policy_with_the_chosen_one_highlighted(login, vm, two_hosts, monkeypatch):
    from .test_wizard import _passing_report

    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())
    measure(vm, 32)
    form = form_for(vm, two_hosts[1], policy="postcopy-after", bandwidth_mib_s=8)
    assert form.is_valid(), form.errors
    data = dict(_post_items(form, {}))
    data.update({"vm": vm.pk, "review": "1"})
    client = login("operator")
    url = reverse(NEW) + f"?vm={vm.pk}&destination={two_hosts[1].pk}"
    response = client.post(url, data)
    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="policy-outcomes"' in page
    assert 'class="table-primary font-weight-bold" data-policy="postcopy-after"' in page
    assert "switches to post-copy at 30 s" in page
    for policy in policies.POLICIES.values():
        assert f'data-policy="{policy.name}"' in page
    assert "Post-copy after N s (N = 30 s)" in page, "the parameters name the policy"
    # Starting keeps the table in the record, beside the prediction.
    data.update({"start": "1", "reviewed": response.context["reviewed"]})
    data.pop("review")
    assert client.post(url, data).status_code == 302
    migration = Migration.objects.get()
    assert migration.parameters["policy"] == "postcopy-after"
    assert [row["name"] for row in migration.prediction["policies"]["rows"] if row["chosen"]] == ["postcopy-after"]
    assert migration.not_before is None


def test_the_wizard_schedules_a_start(login, vm, two_hosts, monkeypatch):
    from .test_wizard import _passing_report

    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())
    when = (timezone.localtime() + timedelta(hours=3)).replace(second=0, microsecond=0)
    form = form_for(vm, two_hosts[1], start_at=when.strftime("%Y-%m-%dT%H:%M"))
    data = dict(_post_items(form, {}))
    data.update({"vm": vm.pk, "review": "1"})
    client = login("operator")
    url = reverse(NEW) + f"?vm={vm.pk}&destination={two_hosts[1].pk}"
    response = client.post(url, data)
    assert f"at {when:%Y-%m-%d %H:%M}" in response.content.decode()
    data.update({"start": "1", "reviewed": response.context["reviewed"]})
    data.pop("review")
    assert client.post(url, data).status_code == 302
    assert Migration.objects.get().not_before == when


def test_a_recommendation_under_a_preset_turns_it_into_custom(vm, two_hosts):
    from migrator.wizard import _as_custom

    p = policies.get(policies.POSTCOPY_AFTER).parameters(base(), MEMORY_512_MIB_KIB, 0)
    assert _as_custom(p, {"bandwidth_mib_s": 50}) == {"bandwidth_mib_s": 50}
    changes = _as_custom(p, {"auto_converge": True})
    assert changes == {
        "policy": "custom",
        "max_downtime_ms": 300,
        "auto_converge": True,
        "allow_postcopy": True,
        "timeout_s": 30,
        "timeout_action": "postcopy",
    }


# ------------------------------------------------------------ the monitor and the executor


def test_the_progress_watch_fires_when_the_remaining_data_stops_falling():
    now = [0.0]
    watch = ProgressWatch(10, clock=lambda: now[0])
    for t, remaining in [(0, 256 * MIB), (2, 100 * MIB), (4, 40 * MIB), (5, 80 * MIB), (9, 40 * MIB - 1000)]:
        now[0] = t
        watch.note(remaining)
        assert not watch.expired()
    now[0] = 13.9
    assert not watch.expired(), "a fall of less than a MiB is no progress, but 10 s have not passed since 4 s"
    now[0] = 14.0
    assert watch.expired()
    watch.note(40 * MIB - PROGRESS_MIN_FALL_BYTES - 1)
    assert not watch.expired(), "a new low starts the clock again"
    assert not ProgressWatch(None).expired()


def test_the_executor_logs_and_audits_the_timeout_that_fired(two_hosts):
    from migrator.executor import Executor

    source, destination = two_hosts
    p = policies.get("minimal-downtime").parameters(base(), MEMORY_512_MIB_KIB, 0)
    m = make_migration(source=source, destination=destination, parameters=p.as_record())
    executor = Executor(m)
    executor._on_timeout("progress", "abort", "")
    event = m.events.get(state="timeout")
    assert event.message == (
        "The progress timeout fired (the remaining data had not fallen for 150 s): "
        "the migration was aborted; the VM stays on the source."
    )
    audit = AuditEvent.objects.get(action="migration.timeout")
    assert audit.details["timeout"] == "progress" and audit.details["timeout_action"] == "abort"
    assert audit.details["policy"] == "minimal-downtime" and audit.details["timeout_s"] == 150
    executor._on_timeout("completion", "suspend", "Requested operation is not valid")
    assert (
        m.events.filter(state="timeout")
        .last()
        .message.endswith("but libvirt refused: Requested operation is not valid")
    )


# ------------------------------------------------------------ migrate_vm


def run_migrate_vm(*args):
    call_command(
        "migrate_vm", "test", "--from", "testhost", "--to", "other", "--user", "olivia", *args, stdout=io.StringIO()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--policy", "fastest"), "--policy: There is no migration policy named 'fastest'; choose one of"),
        (
            ("--policy", "minimal-downtime", "--auto-converge", "--timeout", "9"),
            "--timeout, --auto-converge: the Minimal downtime policy decides these itself; leave them out, or use "
            "--policy custom.",
        ),
        (
            ("--postcopy-after", "20"),
            "--postcopy-after is the N of --policy postcopy-after; leave it out with --policy custom.",
        ),
        (("--policy", "postcopy-after", "--postcopy-after", "0"), "--postcopy-after: Post-copy starts after at least"),
        (("--progress-timeout", "90000"), "--progress-timeout: The progress timeout is at most 86400 s"),
        (("--start-at", "2001-01-01 10:00"), "--start-at: Start at 2001-01-01 10:00"),
    ],
)
def test_migrate_vm_refuses_policy_options_in_plain_words(two_hosts, users, args, message):
    with pytest.raises(CommandError) as refused:
        run_migrate_vm(*args)
    assert message in str(refused.value), str(refused.value)


def test_migrate_vm_queues_with_the_policy_and_the_start_time(two_hosts, users, monkeypatch):
    from .test_wizard import _passing_report

    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())
    queued = {}

    def queue(**kwargs):
        queued.update(kwargs)
        n = Migration.objects.count()
        return make_migration(
            source=two_hosts[0], destination=two_hosts[1], vm_uuid=f"{n:08d}-0000-0000-0000-000000000000"
        )

    monkeypatch.setattr("migrator.management.commands.migrate_vm.queue_migration", queue)
    when = (timezone.localtime() + timedelta(days=1)).replace(second=0, microsecond=0)
    run_migrate_vm(
        "--policy",
        "postcopy-after",
        "--postcopy-after",
        "20",
        "--completion-timeout-per-gib",
        "150",
        "--progress-timeout",
        "0",
        "--start-at",
        when.strftime("%Y-%m-%d %H:%M"),
    )
    p = queued["parameters"]
    vm = two_hosts[0].vms.get(name="test")
    completion = policies.completion_timeout_s(150, vm.memory_kib, policies.copied_disk_bytes(p))
    assert (p.policy, p.postcopy_after_s, p.completion_timeout_per_gib_s, p.progress_timeout_s) == (
        "postcopy-after",
        20,
        150,
        None,
    )
    assert (p.timeout_s, p.timeout_action, p.allow_postcopy) == (min(20, completion), "postcopy", True)
    assert queued["not_before"] == when
    queued.clear()
    run_migrate_vm()
    assert queued["parameters"].policy == "custom" and queued["not_before"] is None
    assert queued["parameters"].progress_timeout_s == 150
