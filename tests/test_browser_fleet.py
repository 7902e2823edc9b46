"""Host maintenance in Chromium, on the lab with real workers: an operator
opens lab-a, plans its evacuation (the plan changes nothing), starts it,
watches the batch page follow each VM live to the end, reads predicted
against actual, and takes lab-a out of maintenance."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hosts import inventory
from hosts.models import Host
from migrator.models import Batch, Migration

from .browser_fixtures import browser_login
from .worker_fixtures import quiet_lab

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_plans_starts_watches_and_ends_an_evacuation(
    lab, lab_hosts, small_guests, real_workers, daphne, browser
):
    quiet_lab(lab)
    names = small_guests(2)
    a = Host.objects.get(name="lab-a")
    inventory.refresh_host(a)
    real_workers(processes=2)
    wait = WebDriverWait(browser, 60)
    browser_login(browser, daphne, "fleet-operator", "operators")

    browser.get(f"{daphne}{a.get_absolute_url()}")
    wait.until(ec.element_to_be_clickable((By.ID, "evacuate"))).click()
    steps = wait.until(ec.presence_of_element_located((By.ID, "plan-steps")))
    assert "nothing has changed" in browser.find_element(By.TAG_NAME, "h1").text
    rows = steps.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert sorted(r.find_elements(By.TAG_NAME, "td")[1].text for r in rows) == sorted(names)
    assert not Batch.objects.exists() and not Migration.objects.exists()
    browser.find_element(By.CSS_SELECTOR, "#start-batch button[type=submit]").click()

    wait.until(ec.presence_of_element_located((By.ID, "batch-migrations")))
    WebDriverWait(browser, 240).until(lambda d: d.find_element(By.ID, "batch-state").text == "Finished")
    table = browser.find_element(By.ID, "batch-migrations").text
    assert table.count("Succeeded") == 2, table
    assert browser.find_element(By.ID, "batch-progress").text == "2 / 2"
    assert browser.find_element(By.ID, "batch-actual").text.endswith(" s")
    batch = Batch.objects.get()
    assert batch.state == "finished"
    for m in batch.migrations.all():
        assert m.state == "succeeded" and lab.where(m.vm_name) == m.destination_name[-1].upper()

    browser.get(f"{daphne}{a.get_absolute_url()}")
    assert "is in maintenance" in browser.find_element(By.ID, "maintenance").text
    browser.find_element(By.CSS_SELECTOR, "#leave-maintenance button").click()
    wait.until(ec.element_to_be_clickable((By.ID, "evacuate")))
    a.refresh_from_db()
    assert not a.in_maintenance
