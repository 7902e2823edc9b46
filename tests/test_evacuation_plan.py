"""The evacuation planner on stored inventory: which host each VM goes to and
why, memory promised to earlier steps, spreading, hosts that take nothing,
VMs that cannot move, the order and the total under the limits, the plan's
JSON round trip, and `manage.py bench_plan`."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from hosts import gateway
from hosts.models import Host, StorageClass, VirtualMachine
from migrator import policies
from migrator.models import Migration, MigrationState
from migrator.planning import learning
from migrator.planning.evacuation import Plan, plan_evacuation, simulate
from tests.test_migration_model import make_migration

pytestmark = pytest.mark.django_db
MIB_KIB = 1024


def info(name: str, *, free_mib: int = 65536, cpu_model: str = "EPYC-Rome", bridges=("br0",)) -> dict:
    return gateway.HostInfo(
        hostname=name,
        driver="QEMU",
        libvirt_version="9.0.0",
        hypervisor_version="7.2.0",
        host_uuid="",
        arch="x86_64",
        cpu_vendor="AMD",
        cpu_model=cpu_model,
        cpu_sockets=1,
        cpu_cores_per_socket=8,
        cpu_threads_per_core=1,
        numa_nodes=1,
        physical_cores=8,
        logical_cpus=8,
        memory_total_kib=2 * free_mib * MIB_KIB,
        memory_free_kib=free_mib * MIB_KIB,
        networks=["default"],
        bridges=list(bridges),
        network_details={"default": gateway.NetworkInfo("default", True, "nat", "virbr0")},
        net_devices=["eth0", *bridges],
        net_devices_known=True,
        bridges_known=True,
    ).as_dict()


def host(name: str, **fields) -> Host:
    facts = {k: fields.pop(k) for k in ("free_mib", "cpu_model", "bridges") if k in fields}
    fields.setdefault("shared_prefixes", "/mnt/nfs\n")
    return Host.objects.create(
        name=name, uri="test:///default", info=info(name, **facts), inventory_refreshed_at=timezone.now(), **fields
    )


def vm(on: Host, name: str, memory_mib: int = 1024, *, state: str = "running", nic=None, shared=True) -> VirtualMachine:
    number = VirtualMachine.objects.count() + 1
    path = f"/mnt/nfs/{name}.qcow2" if shared else f"/var/lib/libvirt/images/{name}.qcow2"
    return VirtualMachine.objects.create(
        host=on,
        uuid=f"00000000-0000-4000-8000-{number:012d}",
        name=name,
        state=state,
        vcpus=2,
        memory_kib=memory_mib * MIB_KIB,
        domain_type="kvm",
        storage_class=StorageClass.SHARED if shared else StorageClass.NON_SHARED,
        disks=[
            {
                "target": "vda",
                "device": "disk",
                "type": "file",
                "source": path,
                "format": "qcow2",
                "capacity_bytes": 2**30,
            }
        ],
        interfaces=[nic or {"type": "network", "source": "default", "mac": f"52:54:00:00:00:{number:02x}"}],
        details={"arch": "x86_64", "cpu_xml": ""},
    )


@pytest.fixture
def no_libvirt(monkeypatch):
    """A plan reads the database only: opening any host fails the test."""

    def refuse(host):
        raise AssertionError(f"the plan tried to open {host.name}")

    for where in ("hosts.connection", "migrator.prechecks", "migrator.prechecks.storage"):
        monkeypatch.setattr(f"{where}.connect_uri", refuse)


@pytest.fixture
def source():
    return host("lab-a")


def test_each_vm_goes_to_a_host_that_passes_the_prechecks_and_others_say_why(source, no_libvirt):
    host("lab-b", cpu_model="EPYC-Milan")
    host("lab-c", bridges=())
    good = host("lab-d")
    web = vm(source, "web", nic={"type": "bridge", "source": "br0", "mac": "52:54:00:00:00:01", "target": "vnet0"})

    plan = plan_evacuation(source)

    (step,) = plan.steps
    assert (step.vm_name, step.vm_uuid, step.destination_id, step.destination_name) == (
        "web",
        web.uuid,
        good.pk,
        "lab-d",
    )
    assert step.reasons[0].startswith("lab-d: it finishes first")
    refused = {r.partition(":")[0]: r for r in step.reasons[1:]}
    assert "Only homogeneous migration is supported" in refused["lab-b"]
    assert "bridge br0, which does not exist on lab-c" in refused["lab-c"]
    assert step.predicted_s > 0 and step.predicted_downtime_ms > 0
    assert not plan.unmovable
    # What the batch queues: the wizard's default parameters under the policy, the report, the prediction.
    assert step.parameters["policy"] == policies.DEFAULT_POLICY
    assert {c["name"] for c in step.report} >= {"memory", "CPU model", "name free", "disk vda"}
    assert step.prediction["available"] is False and "Measure" in step.prediction["reason"]
    assert any("assumed" in b for b in step.basis)


def test_a_host_with_less_memory_free_than_the_vm_needs_is_refused_in_words(source):
    host("lab-b", free_mib=512)
    vm(source, "db", 768)

    plan = plan_evacuation(source)

    assert not plan.steps
    (stays,) = plan.unmovable
    assert stays.vm_name == "db" and not stays.skipped
    (reason,) = stays.reasons
    assert reason.startswith("lab-b: ") and "512 MiB free, the VM needs 768 MiB" in reason


def test_memory_promised_to_earlier_steps_counts(source):
    host("lab-b", free_mib=1024)
    vm(source, "one", 768)
    vm(source, "two", 768)

    plan = plan_evacuation(source)

    assert [s.destination_name for s in plan.steps] == ["lab-b"]
    (stays,) = plan.unmovable
    assert stays.vm_name == {"one", "two"}.difference({plan.steps[0].vm_name}).pop()
    (reason,) = stays.reasons
    assert "768 MiB of it taken by earlier steps of this plan: 256 MiB left, the VM needs 768 MiB" in reason


def test_identical_vms_spread_over_identical_hosts(source):
    for name in ("lab-b", "lab-c", "lab-d", "lab-e"):
        host(name)
    for i in range(4):
        vm(source, f"web-{i}")

    plan = plan_evacuation(source)

    assert sorted(s.destination_name for s in plan.steps) == ["lab-b", "lab-c", "lab-d", "lab-e"]
    assert "the fewest VMs of this plan" in plan.steps[1].reasons[0]


def test_a_host_in_maintenance_or_disabled_takes_nothing(source):
    host("lab-m", in_maintenance=True)
    host("lab-x", enabled=False)
    host("lab-ok")
    vm(source, "web")

    assert [s.destination_name for s in plan_evacuation(source).steps] == ["lab-ok"]

    chosen = Host.objects.get(name="lab-m")
    plan = plan_evacuation(source, destinations=[chosen])
    (stays,) = plan.unmovable
    assert stays.reasons == [
        "lab-m is in maintenance: no new migration goes to it; take it out of maintenance, or choose another host."
    ]


def test_shut_off_vms_are_skipped_and_other_refusals_are_named(source):
    other = host("lab-b", shared_prefixes="")
    vm(source, "off", state="shutoff")
    vm(source, "nfs")
    vm(other, "local", shared=False)
    local = vm(source, "local", shared=False)

    plan = plan_evacuation(source)

    by_name = {u.vm_name: u for u in plan.unmovable}
    assert by_name["off"].skipped and "off is shutoff: only running VMs are live-migrated" in by_name["off"].reasons[0]
    assert "lists no shared storage prefix covering it" in by_name["nfs"].reasons[0]
    assert "lab-b already has a VM named local" in by_name["local"].reasons[0]
    assert by_name["local"].vm_uuid == local.uuid
    assert not plan.steps


def test_a_vm_already_migrating_or_with_no_host_to_go_to_stays(source):
    busy = vm(source, "busy")
    vm(source, "web")
    Migration.objects.create(
        state=MigrationState.WAITING,
        vm_uuid=busy.uuid,
        vm_name="busy",
        vm_memory_kib=busy.memory_kib,
        source_name="lab-a",
        source_uri="test:///default",
        destination_name="elsewhere",
        destination_uri="test:///default",
        storage_class="shared",
    )

    plan = plan_evacuation(source)

    by_name = {u.vm_name: u.reasons for u in plan.unmovable}
    assert "busy is already being migrated (migration #" in by_name["busy"][0]
    assert by_name["web"] == [
        "No host may receive it: every other host is disabled, in maintenance or takes no incoming migration; "
        "add or enable one."
    ]


def test_a_bulk_move_plans_only_the_chosen_vms_to_the_chosen_host(source):
    host("lab-b")
    target = host("lab-c")
    chosen = vm(source, "web")
    vm(source, "db")

    plan = plan_evacuation(source, destinations=[target], vms=[chosen])

    assert [(s.vm_name, s.destination_name) for s in plan.steps] == [("web", "lab-c")]


def test_the_longest_migration_goes_first(source):
    host("lab-b")
    for name, memory in (("small", 1024), ("big", 4096), ("mid", 2048)):
        vm(source, name, memory)

    plan = plan_evacuation(source)

    assert [s.vm_name for s in plan.steps] == ["big", "mid", "small"]
    assert plan.steps[0].predicted_s > plan.steps[1].predicted_s > plan.steps[2].predicted_s


def test_slots_worked_example():
    # Four migrations of 10 s, two at once out of the source: two rounds.
    starts, total = simulate([("b", 10.0)] * 4, outgoing=2, total=5, incoming={"b": 5})
    assert (starts, total) == ([0.0, 0.0, 10.0, 10.0], 20.0)
    # One at a time into the destination, or over the site: four rounds.
    assert simulate([("b", 10.0)] * 4, outgoing=2, total=5, incoming={"b": 1})[1] == 40.0
    assert simulate([("b", 10.0), ("c", 10.0)] * 2, outgoing=3, total=1, incoming=2)[1] == 40.0
    # Different destinations each take one: the source's two slots bind.
    assert simulate([(d, 10.0) for d in "bcde"], outgoing=2, total=5, incoming=1) == ([0.0, 0.0, 10.0, 10.0], 20.0)


def test_the_plan_total_counts_the_source_limit(source, settings):
    settings.MIGRATION_MAX_TOTAL = 5
    source.max_outgoing = 2
    source.save()
    for name in ("lab-b", "lab-c", "lab-d", "lab-e"):
        host(name)
    for i in range(4):
        vm(source, f"web-{i}")

    plan = plan_evacuation(source)

    each = plan.steps[0].predicted_s
    # No migration has finished here yet: each holds its slot the default overhead beyond its copy.
    slot = each + learning.DEFAULT_SLOT_OVERHEAD_S
    assert plan.slot_overhead_s == learning.DEFAULT_SLOT_OVERHEAD_S
    assert "assumed until migrations have finished here" in plan.notes[0]
    assert {s.predicted_s for s in plan.steps} == {each}
    assert [s.start_offset_s for s in plan.steps] == pytest.approx([0, 0, slot, slot])
    assert plan.predicted_total_s == pytest.approx(2 * slot)
    assert plan.limits["outgoing"] == 2


def test_the_slot_overhead_is_what_the_sources_migrations_took_beyond_their_copy(source):
    start = timezone.now() - timedelta(minutes=5)
    for extra_s in (1.0, 3.0, 8.0):
        make_migration(
            state=MigrationState.SUCCEEDED,
            source_name=source.name,
            started_at=start,
            finished_at=start + timedelta(seconds=10 + extra_s),
            total_time_ms=10_000,
        )
    assert learning.slot_overhead(source.name)[0] == pytest.approx(3.0)
    overhead, words = learning.slot_overhead("elsewhere")
    assert overhead == pytest.approx(3.0) and "the site's last 3" in words


def test_migrations_already_running_hold_their_slots_in_the_plan(source, settings):
    settings.MIGRATION_MAX_TOTAL = 5
    source.max_outgoing = 1
    source.save()
    b = host("lab-b")
    vm(source, "web-0")
    running = make_migration(
        state=MigrationState.RUNNING,
        source_name=source.name,
        destination_name=b.name,
        started_at=timezone.now(),
        prediction={"plan": {"total_time_s": 30.0}},
    )

    plan = plan_evacuation(source)

    (step,) = plan.steps
    assert step.start_offset_s == pytest.approx(30.0 + plan.slot_overhead_s, abs=1.0)
    assert f"migration #{running.pk}) is already migrating" in plan.notes[1]


def test_a_policy_sets_every_steps_parameters_and_an_unknown_one_is_refused(source):
    host("lab-b")
    vm(source, "web")

    plan = plan_evacuation(source, policy=policies.POSTCOPY_AFTER)

    assert plan.policy == policies.POSTCOPY_AFTER
    assert plan.steps[0].parameters["policy"] == policies.POSTCOPY_AFTER
    with pytest.raises(policies.UnknownPolicy):
        plan_evacuation(source, policy="teleport")


def test_the_plan_survives_a_json_round_trip(source):
    host("lab-b", free_mib=512)
    host("lab-c")
    vm(source, "web")
    vm(source, "big", 2048)
    vm(source, "off", state="shutoff")

    plan = plan_evacuation(source)
    stored = json.loads(json.dumps(plan.as_dict()))
    again = Plan.from_dict(stored)

    assert again == plan
    assert again.as_dict() == stored
    assert stored["steps"][0]["vm_name"] == "big" and stored["unmovable"][0]["vm_name"] == "off"


def test_bench_plan_ends_with_its_figures():
    out = io.StringIO()
    call_command("bench_plan", vms=6, hosts=4, repeat=1, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert re.fullmatch(r"vms=6 hosts=4 plan_ms=\d+", lines[-1]), lines
    assert not Host.objects.exists(), "the benchmark's rows are rolled back"
