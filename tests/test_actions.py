"""Acting on a migration: the checks and audit of migrator.actions, the
pages and command that use them, and the monitor that applies them."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import libvirt
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from hosts import gateway
from migrator import actions
from migrator.audit.models import AuditEvent
from migrator.models import MigrationAction, MigrationState

from .test_migration_model import make_migration

pytestmark = pytest.mark.django_db


def running(**parameters):
    m = make_migration(parameters=parameters)
    m.claim(1, "worker")
    return m


def test_an_action_is_stored_for_the_worker_and_audited(users):
    m = running()
    who = actions.Requester(users["operator"], "browser")
    action = actions.request_action(m, "bandwidth", 64, who)
    assert action.label == "bandwidth 64 MiB/s" and action.applied_at is None
    event = AuditEvent.objects.get(action="migration.action_requested")
    assert event.details == {"kind": "bandwidth", "value": 64, "via": "browser"}
    assert m.events.filter(state="action asked").exists()


@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [
        ("bandwidth", 0, "The bandwidth limit must be a whole number from 1 to 100,000 MiB/s"),
        ("max_downtime", None, "The max downtime must be a whole number from 1"),
        ("postcopy", None, "started without post-copy allowed"),
        ("reboot", None, "Unknown action"),
    ],
)
def test_a_wrong_action_is_refused_in_plain_words(users, kind, value, words):
    m = running()
    with pytest.raises(actions.ActionRefused, match=words):
        actions.request_action(m, kind, value, actions.Requester(users["operator"]))
    assert not MigrationAction.objects.exists()


def test_post_copy_can_be_switched_on_only_when_allowed_and_not_twice(users):
    who = actions.Requester(users["operator"])
    m = running(allow_postcopy=True)
    assert "postcopy" in actions.available_actions(m)
    actions.request_action(m, "postcopy", None, who)
    m.mark_postcopy()
    assert actions.available_actions(m) == ["bandwidth"], "in post-copy only the bandwidth still applies"
    with pytest.raises(actions.ActionRefused, match="already in post-copy"):
        actions.request_action(m, "force_complete", None, who)
    with pytest.raises(actions.ActionRefused, match="cannot be cancelled"):
        actions.request_cancel(m, who)


def test_actions_apply_only_while_it_runs(users):
    m = make_migration()
    with pytest.raises(actions.ActionRefused, match="is queued: actions apply only while it runs"):
        actions.request_action(m, "bandwidth", 10, actions.Requester(users["operator"]))


def test_only_an_interrupted_post_copy_is_resumed(users, monkeypatch):
    enqueued = []
    monkeypatch.setattr("django_rq.get_queue", lambda name: SimpleNamespace(enqueue=lambda *a, **k: enqueued.append(a)))
    who = actions.Requester(users["operator"])
    m = running(allow_postcopy=True)
    with pytest.raises(actions.ActionRefused, match="Only an interrupted post-copy can be resumed"):
        actions.request_resume(m, who)
    m.interrupt("link lost", "Post-copy was interrupted.")
    actions.request_resume(m, who)
    assert enqueued == [(actions.RESUME_JOB, m.pk)]
    assert AuditEvent.objects.filter(action="migration.postcopy_resume_requested").exists()


def test_settling_by_hand_needs_a_superuser_a_reason_and_an_expired_lease(users):
    m = running()
    with pytest.raises(actions.ActionRefused, match="Only a superuser"):
        actions.settle_by_hand(m, "failed", "a", "checked on a", actions.Requester(users["operator"]))
    admin = actions.Requester(users["admin"])
    with pytest.raises(actions.ActionRefused, match="A worker still holds"):
        actions.settle_by_hand(m, "failed", "a", "checked on a", admin)
    m.need_attention("a does not answer", "Where the VM runs is not known.")
    with pytest.raises(actions.ActionRefused, match="Give a reason"):
        actions.settle_by_hand(m, "failed", "a", "", admin)
    actions.settle_by_hand(m, "failed", "a", "virsh list on a shows it running", admin)
    m.refresh_from_db()
    assert m.state == MigrationState.FAILED and m.vm_location == "a"
    assert "Settled by hand by root-admin" in m.outcome_note
    event = AuditEvent.objects.get(action="migration.settled_by_hand")
    assert event.details["reason"] == "virsh list on a shows it running"


def test_the_live_page_offers_the_actions_and_posts_them(login):
    client = login("operator")
    m = running(allow_postcopy=True)
    page = client.get(m.get_absolute_url()).content.decode()
    for kind in ("bandwidth", "max_downtime", "postcopy", "force_complete"):
        assert f'data-kind="{kind}"' in page
    response = client.post(reverse("migrator:action", args=[m.pk]), {"kind": "max_downtime", "value": "500"})
    assert response.status_code == 302
    assert MigrationAction.objects.get().label == "max downtime 500 ms"
    response = client.post(reverse("migrator:action", args=[m.pk]), {"kind": "max_downtime", "value": "x"}, follow=True)
    assert "Enter a whole number." in response.content.decode()


def test_an_auditor_cannot_act_and_only_a_superuser_sees_the_settle_form(login):
    m = running()
    m.need_attention("b does not answer", "unknown")
    client = login("auditor")
    assert client.post(reverse("migrator:action", args=[m.pk]), {"kind": "bandwidth", "value": "5"}).status_code == 403
    assert 'id="settle"' not in client.get(m.get_absolute_url()).content.decode()
    assert 'id="settle"' in login("admin").get(m.get_absolute_url()).content.decode()


def test_the_command_goes_through_the_same_checks(users):
    m = running()
    call_command("control_migration", m.pk, "bandwidth", "32", user="olivia")
    assert MigrationAction.objects.get().value == 32
    with pytest.raises(CommandError, match="started without post-copy allowed"):
        call_command("control_migration", m.pk, "postcopy", user="olivia")
    with pytest.raises(CommandError, match="Give the new value in ms"):
        call_command("control_migration", m.pk, "max-downtime", user="olivia")
    with pytest.raises(CommandError, match="not an operator"):
        call_command("control_migration", m.pk, "cancel", user="arthur")


# ------------------------------------------------------------ the monitor


class Domain:
    """jobStats() answers a running job; abortJob() fails until libvirt has
    created the job; the action calls are recorded."""

    def __init__(self, done: threading.Event, abort_failures: int = 0):
        self.done, self.abort_failures = done, abort_failures
        self.calls: list[tuple] = []

    def jobStats(self, flags):  # noqa: N802 - libvirt's names
        return {"type": gateway.JobType.UNBOUNDED, "data_total": 1, "time_elapsed": 100}

    def state(self):
        return [libvirt.VIR_DOMAIN_RUNNING, 1]

    def abortJob(self):  # noqa: N802
        self.calls.append(("abortJob",))
        if self.abort_failures:
            self.abort_failures -= 1
            raise libvirt.libvirtError("Requested operation is not valid: no job is active on the domain")
        self.done.set()

    def migrateSetMaxSpeed(self, value, flags):  # noqa: N802
        self.calls.append(("migrateSetMaxSpeed", value, flags))

    def migrateSetMaxDowntime(self, value, flags):  # noqa: N802
        self.calls.append(("migrateSetMaxDowntime", value))

    def suspend(self):
        self.calls.append(("suspend",))
        self.done.set()


def watch(monkeypatch, dom, spec, **callbacks):
    run = gateway.MigrationRun("qemu:///fake", "uuid", spec, sample_interval_s=0.01, **callbacks)
    dom.done = run._done
    conn = SimpleNamespace(lookupByUUIDString=lambda uuid: dom, close=lambda: None)
    monkeypatch.setattr("hosts.gateway.migration.open_connection", lambda uri: conn)
    timer = threading.Timer(5, run._done.set)
    timer.start()
    run._watch()
    timer.cancel()
    return run


def test_a_cancel_that_lands_before_the_job_exists_is_tried_again(monkeypatch):
    dom = Domain(threading.Event(), abort_failures=3)
    run = watch(monkeypatch, dom, gateway.MigrationSpec(dconnuri="x"), should_abort=lambda: True)
    assert run.aborted and run.abort_confirmed
    assert dom.calls.count(("abortJob",)) == 4


def test_a_failing_callback_costs_one_tick_not_the_watch(monkeypatch):
    dom = Domain(threading.Event())
    answers = iter([RuntimeError("the database restarted"), RuntimeError("still down"), True])
    errors = []

    def should_abort():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    run = watch(
        monkeypatch,
        dom,
        gateway.MigrationSpec(dconnuri="x"),
        should_abort=should_abort,
        on_callback_error=errors.append,
    )
    assert [str(e) for e in errors] == ["the database restarted", "still down"]
    assert run.abort_confirmed, "cancel still works after the errors"


def test_the_monitor_applies_the_operators_actions_once(monkeypatch):
    dom = Domain(threading.Event())
    pending = [[gateway.JobAction(1, "bandwidth", 64), gateway.JobAction(2, "max_downtime", 900)], [], []]
    done = []

    def next_actions():
        if not pending:
            return [gateway.JobAction(3, "force_complete")]
        return pending.pop(0)

    watch(
        monkeypatch,
        dom,
        gateway.MigrationSpec(dconnuri="x"),
        pending_actions=next_actions,
        on_action=lambda action, ok, message, stats: done.append((action.id, ok, message)),
    )
    assert ("migrateSetMaxSpeed", 64, 0) in dom.calls and ("migrateSetMaxDowntime", 900) in dom.calls
    assert ("suspend",) in dom.calls
    assert done[0] == (1, True, "Bandwidth limit set to 64 MiB/s.")
    assert done[2][0] == 3 and done[2][1]


def test_the_settle_form_is_offered_only_for_a_record_no_worker_holds(login):
    client = login("admin")
    held = running()
    assert 'id="settle"' not in client.get(held.get_absolute_url()).content.decode(), "its lease is fresh"
    held.finish({"time_elapsed": 1000})
    assert 'id="settle"' not in client.get(held.get_absolute_url()).content.decode(), "already settled"
