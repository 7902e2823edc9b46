"""The wizard's steps without the lab (libvirt's test driver answers): bad
positions are 404s, each step renders its own page, and a start that does not
match what was reviewed starts nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from hosts.models import Host
from migrator.forms import MigrationForm
from migrator.models import Migration
from migrator.wizard import _post_items

pytestmark = pytest.mark.django_db
NEW = "migrator:new"


@pytest.fixture
def vm(two_hosts):
    return two_hosts[0].vms.get(name="test")


@pytest.mark.parametrize("query", [{"vm": "abc"}, {"vm": "999999"}, {"vm": "-1"}, {"vm": "1", "destination": "x"}])
def test_it_answers_404_for_a_bad_position(login, vm, query):
    response = login("operator").get(reverse(NEW), query)
    assert response.status_code == 404


def test_it_answers_404_when_the_destination_is_the_source(login, vm):
    response = login("operator").get(reverse(NEW), {"vm": vm.pk, "destination": vm.host_id})
    assert response.status_code == 404


def test_step_one_lists_running_vms(login, vm):
    page = login("operator").get(reverse(NEW)).content.decode()
    assert f"?vm={vm.pk}" in page and "test" in page


def test_step_two_judges_each_host_with_the_default_plan(login, vm, two_hosts):
    response = login("operator").get(reverse(NEW), {"vm": vm.pk})
    (host, report, plan) = response.context["options"][0]
    assert host == two_hosts[1]
    assert len(plan) == 1 and plan[0].startswith("Copy vda (") and plan[0].endswith("created on the destination")
    # Both are the same test-driver host: refused, in words.
    assert any(c.name == "distinct hosts" and c.status == "fail" for c in report.checks)
    assert "Choose other" not in response.content.decode()


def test_step_three_offers_the_parameters(login, vm, two_hosts):
    response = login("operator").get(reverse(NEW), {"vm": vm.pk, "destination": two_hosts[1].pk})
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="max_downtime_ms"' in page and 'name="remove_source_images"' in page


def test_review_refuses_a_destination_other_than_the_wizards(login, vm, two_hosts):
    third = Host.objects.create(name="third", uri="test:///default")
    data = dict(_post_items_for(vm, third))
    data.update({"vm": vm.pk, "review": "1"})
    url = reverse(NEW) + f"?vm={vm.pk}&destination={two_hosts[1].pk}"
    response = login("operator").post(url, data)
    assert response.status_code == 400
    assert f"names destination {two_hosts[1].pk} but the form sends destination {third.pk}" in response.content.decode()
    assert not Migration.objects.exists()


def test_start_without_a_valid_review_starts_nothing(login, vm, two_hosts, monkeypatch):
    # The pre-checks would refuse two test-driver hosts; this test is about the review token alone.
    monkeypatch.setattr("migrator.forms.run_prechecks", lambda *a, **k: _passing_report())
    data = dict(_post_items_for(vm, two_hosts[1]))
    data.update({"vm": vm.pk, "start": "1", "reviewed": "forged"})
    client = login("operator")
    response = client.post(reverse(NEW), data)
    assert response.status_code == 200
    assert "review them again" in response.content.decode()
    assert response.context["reviewed"], "the review is shown again, with a fresh token"
    assert not Migration.objects.exists()

    # With the token of that review, the migration starts and keeps what was shown.
    data["reviewed"], shown = response.context["reviewed"], response.context["prediction"]
    response = client.post(reverse(NEW), data)
    assert response.status_code == 302
    migration = Migration.objects.get()
    assert migration.precheck_report == _passing_report().as_list()
    assert migration.prediction == shown


def _passing_report():
    from migrator.prechecks import PASS, Report

    report = Report()
    report.add("distinct hosts", PASS, "source and destination are different hosts")
    return report


def _post_items_for(vm, destination):
    form = MigrationForm(MigrationForm.defaults(vm, destination), vm=vm, run_prechecks=False)
    assert form.is_valid(), form.errors
    return _post_items(form, {})
