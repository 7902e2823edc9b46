"""The executor's decisions without the lab: what the hosts answer is staged
through the gateway's functions, and each test checks what the executor
does with it and what the record says."""

from __future__ import annotations

import os

import pytest

from hosts import gateway
from migrator.audit.models import AuditEvent
from migrator.executor import Executor
from migrator.models import MigrationState

from .test_migration_model import make_migration

pytestmark = pytest.mark.django_db
VDA = "/var/lib/libvirt/images/db-vda.qcow2"
PLAN = {
    "disks": ["vda"],
    "disk_plan": [{"target": "vda", "source": VDA, "format": "qcow2", "capacity_bytes": 64 * 2**20}],
    "remove_source_images": True,
}


class Hosts:
    """What each host answers: VM states and image users, by URI."""

    def __init__(self, monkeypatch, states: dict, users: dict | None = None, unreachable: tuple = ()):
        self.states, self.users, self.unreachable = states, users or {}, unreachable
        self.deleted: list[tuple[str, str]] = []
        self.destroyed: list[str] = []
        self.resumed: list[str] = []
        monkeypatch.setattr(gateway, "vm_state", self.vm_state)
        monkeypatch.setattr(gateway, "path_info", self.path_info)
        monkeypatch.setattr(gateway, "delete_volume", self.delete_volume)
        monkeypatch.setattr(gateway, "remove_stale_copy", self.remove_stale_copy)
        monkeypatch.setattr(gateway, "resume_vm", self.resume_vm)
        monkeypatch.setattr(gateway, "placement", self.placement)
        monkeypatch.setattr(gateway, "completed_job_stats", self.completed_job_stats)
        monkeypatch.setattr(gateway, "forget_inactive_copy", lambda uri, uuid: False)
        self.postcopy: dict[str, str] = {}
        self.completed: dict[str, dict] = {}

    def _answer(self, uri):
        if uri in self.unreachable:
            raise gateway.GatewayError(f"No answer from {uri} within 10 s.", uri=uri)

    def vm_state(self, uri, uuid):
        self._answer(uri)
        return self.states.get(uri)

    def placement(self, uri, uuid):
        self._answer(uri)
        return gateway.Placement(self.states.get(uri), self.postcopy.get(uri, ""), True)

    def completed_job_stats(self, uri, uuid):
        self._answer(uri)
        return self.completed.get(uri, {})

    def path_info(self, uri, path):
        self._answer(uri)
        return gateway.PathInfo(path, True, False, "default", 10**9, tuple(self.users.get(uri, ())), 64 * 2**20)

    def delete_volume(self, uri, path):
        self._answer(uri)
        self.deleted.append((uri, path))
        return True

    def remove_stale_copy(self, uri, uuid):
        self.destroyed.append(uri)
        self.states[uri] = None
        return True

    def resume_vm(self, uri, uuid):
        self.resumed.append(uri)
        self.states[uri] = "running"


@pytest.fixture(autouse=True)
def impatient(monkeypatch):
    """A host that does not answer is not asked again (the lab tests wait)."""
    monkeypatch.setattr("migrator.executor.SETTLE_PATIENCE_S", 0.0)
    monkeypatch.setattr("migrator.executor.DESTINATION_WATCH_S", 0.0)
    monkeypatch.setattr("migrator.executor.LATE_FINISH_S", 0.0)


def executor(**parameters) -> Executor:
    migration = make_migration(storage_class="non_shared", parameters={**PLAN, **parameters})
    migration.claim(1, "worker")
    return Executor(migration)


def test_it_removes_the_copied_images_from_the_source_after_a_certain_success(monkeypatch):
    run = executor()
    hosts = Hosts(monkeypatch, {"qemu:///a": None, "qemu:///b": "running"})
    notes = run._remove_source_images()
    assert hosts.deleted == [("qemu:///a", VDA)]
    assert notes == [f"Removed {VDA} from a."]
    event = AuditEvent.objects.get(action="migration.source_image_removed")
    assert event.details == {"host": "a", "path": VDA, "via": "worker"}
    assert run.migration.events.filter(state="cleanup").count() == 1


@pytest.mark.parametrize(
    ("states", "users", "unreachable", "note"),
    [
        ({"qemu:///a": "shutoff"}, {}, (), "the VM is still defined on a"),
        ({}, {}, ("qemu:///a",), "a did not answer"),
        ({}, {"qemu:///a": ["other-vm"]}, (), "it is a disk of other-vm there"),
    ],
)
def test_it_keeps_the_source_image_when_anything_is_uncertain(monkeypatch, states, users, unreachable, note):
    run = executor()
    hosts = Hosts(monkeypatch, states, users, unreachable)
    notes = run._remove_source_images()
    assert hosts.deleted == []
    assert any(note in n for n in notes), notes
    assert not AuditEvent.objects.filter(action="migration.source_image_removed").exists()


def test_it_keeps_the_source_image_when_the_operator_said_so(monkeypatch):
    run = executor(remove_source_images=False)
    hosts = Hosts(monkeypatch, {})
    assert run._remove_source_images() == [] and hosts.deleted == []


def test_a_failure_removes_what_it_created_on_the_destination_and_nothing_on_the_source(monkeypatch):
    run = executor()
    run.created_images.append(VDA)
    hosts = Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": "paused"})
    run._settle_failure(gateway.GatewayError("internal error: client socket is closed"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.FAILED and m.vm_location == "a"
    assert hosts.destroyed == ["qemu:///b"], "the paused incoming copy was removed"
    assert hosts.deleted == [("qemu:///b", VDA)], "only the image created on the destination"
    assert "still running on a" in m.outcome_note


def test_a_failure_resumes_a_source_left_paused_by_the_timeout(monkeypatch):
    run = executor()
    hosts = Hosts(monkeypatch, {"qemu:///a": "paused", "qemu:///b": None})
    run._settle_failure(gateway.GatewayError("operation aborted"))
    run.migration.refresh_from_db()
    assert hosts.resumed == ["qemu:///a"]
    assert run.migration.vm_location == "a"


def test_a_failure_with_the_vm_nowhere_running_says_check_it_by_hand(monkeypatch):
    run = executor()
    Hosts(monkeypatch, {"qemu:///a": "shutoff", "qemu:///b": None})
    run._settle_failure(gateway.GatewayError("boom"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.FAILED and m.vm_location == "unknown"
    assert "check it by hand" in m.outcome_note


def test_a_cancel_is_recorded_as_cancelled(monkeypatch):
    run = executor()
    run.migration.request_cancel(None)
    Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": None})
    run._settle_failure(gateway.GatewayError("operation aborted"), cancelled=True)
    run.migration.refresh_from_db()
    assert run.migration.state == MigrationState.CANCELLED


def test_the_jobs_re_check_is_kept_beside_the_reviewed_report(monkeypatch):
    from hosts.models import Host, VirtualMachine
    from migrator.prechecks import FAIL, PASS, Report

    a = Host.objects.create(name="a", uri="test:///default")
    b = Host.objects.create(name="b", uri="test:///default")
    vm = VirtualMachine.objects.create(host=a, uuid="11111111-1111-1111-1111-111111111111", name="web", state="running")
    reviewed = [{"name": "memory", "status": PASS, "message": "enough", "requirement": "R5"}]
    migration = make_migration(vm=vm, source=a, destination=b, precheck_report=reviewed)
    recheck = Report()
    recheck.add("memory", FAIL, "b has 100 MiB free, the VM needs 256 MiB", "R5")
    monkeypatch.setattr("migrator.executor.run_prechecks", lambda *args, **kwargs: recheck)
    monkeypatch.setattr(Executor, "_refresh_inventory", lambda self: None)
    Executor(migration).run()
    migration.refresh_from_db()
    assert migration.state == MigrationState.FAILED
    assert migration.precheck_report == reviewed, "what the operator reviewed stays as it was"
    assert migration.job_precheck_report == recheck.as_list()
    assert "b has 100 MiB free" in migration.error_message


# ------------------------------------------------------------ faults


def test_a_post_copy_that_lost_its_link_is_interrupted_and_nothing_is_touched(monkeypatch):
    run = executor()
    run.created_images.append(VDA)
    hosts = Hosts(monkeypatch, {"qemu:///a": "paused", "qemu:///b": "running"})
    hosts.postcopy = {"qemu:///a": "failed", "qemu:///b": "failed"}
    run._settle_failure(gateway.GatewayError("internal error: client socket is closed"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.INTERRUPTED
    assert hosts.destroyed == [] and hosts.resumed == [] and hosts.deleted == [], "nothing destroyed or resumed"
    assert "Do not stop, destroy or resume it on either host" in m.outcome_note
    assert m.vm_location == "split between a and b"


def test_an_error_after_the_switch_over_is_a_success_only_when_libvirt_confirms_it(monkeypatch):
    run = executor(disks=[], disk_plan=[])
    hosts = Hosts(monkeypatch, {"qemu:///a": None, "qemu:///b": "running"})
    run._settle_failure(gateway.GatewayError("internal error: client socket is closed"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.ATTENTION, "no completed job on the destination: not a success"
    assert "did not report the migration completed" in m.outcome_note

    hosts.completed["qemu:///b"] = {"type": gateway.JobType.COMPLETED, "time_elapsed": 1200, "downtime": 40}
    run.recheck()
    m.refresh_from_db()
    assert m.state == MigrationState.SUCCEEDED and m.total_time_ms == 1200 and m.vm_location == "b"


def test_a_source_that_does_not_answer_needs_attention_until_it_does(monkeypatch):
    run = executor(disks=[], disk_plan=[])
    hosts = Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": None}, unreachable=("qemu:///a",))
    run._settle_failure(gateway.GatewayError("End of file while reading data: Input/output error"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.ATTENTION and m.vm_location == "unknown"
    assert m.error_message.startswith("The libvirt daemon on a stopped or does not answer")
    assert m.error_details["libvirt_message"] == "End of file while reading data: Input/output error"

    hosts.unreachable = ()
    run.recheck()
    m.refresh_from_db()
    assert m.state == MigrationState.FAILED and m.vm_location == "a"


@pytest.mark.parametrize(
    ("message", "unreachable", "lost", "expected"),
    [
        ("internal error: client socket is closed", (), False, "The connection between a and b was lost"),
        ("internal error: client socket is closed", ("qemu:///b",), False, "The libvirt daemon on b stopped"),
        ("End of file while reading data", (), True, "The libvirt daemon on a restarted"),
        ("Unable to write to '/x.qcow2': No space left on device", (), False, "b ran out of disk space"),
        (
            "operation failed: Cannot read from TLS channel: Input/output error",
            (),
            False,
            "The encrypted (TLS) connection between a and b could not be set up: operation failed: Cannot read",
        ),
    ],
)
def test_a_failure_names_what_happened_in_plain_words(monkeypatch, message, unreachable, lost, expected):
    run = executor(disks=[], disk_plan=[])
    Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": None}, unreachable=unreachable)
    outcome = gateway.MigrationOutcome(False, {}, source_connection_lost=lost)
    run._settle_failure(gateway.GatewayError(message, code=1), outcome=outcome)
    m = run.migration
    m.refresh_from_db()
    # A destination that does not answer may still start its copy: attention until it answers.
    assert m.state == (MigrationState.ATTENTION if unreachable else MigrationState.FAILED)
    assert m.vm_location == "a"
    assert m.error_message.startswith(expected), m.error_message
    assert m.error_details["libvirt_message"] == message
    assert "libvirtd log" not in m.error_message


def test_a_stall_is_logged_and_kept_in_the_record(monkeypatch, settings):
    settings.MIGRATION_STALL_S = 0.0
    run = executor(disks=[], disk_plan=[])
    stats = {"time_elapsed": 1000, "data_processed": 10 * 2**20, "data_remaining": 5 * 2**20, "memory_iteration": 1}
    assert run._watch_stall(stats) == 0
    run._moved_at -= 3
    assert run._watch_stall(stats) >= 3
    assert run.migration.events.filter(state="stalled").exists()
    assert run._watch_stall({**stats, "data_processed": 11 * 2**20}) == 0
    assert run.migration.events.filter(state="moving").exists()
    assert run._stall_notes()[0].startswith("The migration stalled: nothing moved for")


def test_a_record_whose_lease_ran_out_is_reconciled_and_a_fresh_one_is_not(monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    from migrator import executor as executor_module
    from migrator.models import Migration

    settings.MIGRATION_LEASE_S = 30
    run = executor(disks=[], disk_plan=[])
    hosts = Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": None})
    monkeypatch.setattr(gateway, "active_job", lambda uri, uuid: {})
    assert executor_module.reconcile(wait_s=1) == [], "a fresh lease: its worker holds it"
    stale = timezone.now() - timedelta(seconds=31)
    # A reused pid on this very machine does not keep it alive: the lease decides.
    Migration.objects.filter(pk=run.migration.pk).update(heartbeat_at=stale, worker_pid=os.getpid())
    settled = executor_module.reconcile(wait_s=1)
    assert [m.pk for m in settled] == [run.migration.pk]
    m = Migration.objects.get(pk=run.migration.pk)
    assert m.state == MigrationState.FAILED and m.vm_location == "a"
    assert "worker running this migration stopped" in m.error_message
    assert hosts.destroyed == []


def test_a_queued_record_whose_job_is_gone_is_queued_again_then_failed(monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    from migrator import jobs
    from migrator.models import Migration

    settings.MIGRATION_REQUEUE_LIMIT = 1
    enqueued = []
    monkeypatch.setattr("migrator.jobs.enqueue_migration", enqueued.append)
    m = make_migration(created_at=timezone.now() - timedelta(minutes=5), rq_job_id="gone-for-good")
    assert [r.pk for r in jobs.requeue_lost_jobs()] == [m.pk] and enqueued == [m.pk]
    jobs.requeue_lost_jobs()
    m = Migration.objects.get(pk=m.pk)
    assert m.state == MigrationState.FAILED and "lost 1 times" in m.error_message
    assert m.vm_location == "a"


def test_a_copy_the_destination_started_after_the_failure_is_removed_once_it_answers(monkeypatch):
    """libvirt on a hung destination can process a late Finish when it wakes
    and start its copy while the source, which gave up, runs the VM too."""
    run = executor()
    run.created_images.append(VDA)
    hosts = Hosts(monkeypatch, {"qemu:///a": "running", "qemu:///b": "running"}, unreachable=("qemu:///b",))
    run._settle_failure(gateway.GatewayError("internal error: connection closed due to keepalive timeout"))
    m = run.migration
    m.refresh_from_db()
    assert m.state == MigrationState.ATTENTION and m.vm_location == "a"
    assert "removes that copy as soon as b answers" in m.outcome_note
    assert hosts.destroyed == []

    hosts.unreachable = ()
    Executor(m).recheck()
    m.refresh_from_db()
    assert m.state == MigrationState.FAILED and m.vm_location == "a"
    assert hosts.destroyed == ["qemu:///b"]
    assert (
        "Removed the running copy left on b (its libvirt had started it after the migration failed)" in m.outcome_note
    )
