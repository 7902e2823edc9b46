"""The live page's actions in Chromium, on a real lab migration: a
bandwidth change applied while it runs and marked on the chart, then a
switch to post-copy that ends it on lab-b."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hosts import inventory
from migrator.models import Migration, MigrationAction

from .browser_fixtures import browser_login

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_changes_the_bandwidth_then_switches_to_post_copy(
    lab, lab_hosts, guest, daphne, browser, jobs_in_process
):
    a, _b = lab_hosts
    guest("web-shared")
    inventory.refresh_host(a)
    wait = WebDriverWait(browser, 60)
    browser_login(browser, daphne, "live-operator", "operators")
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, "Migrate a VM"))).click()
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "web-shared"))).click()
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Choose lab-b"))).click()
    bandwidth = wait.until(ec.presence_of_element_located((By.NAME, "bandwidth_mib_s")))
    bandwidth.clear()
    bandwidth.send_keys("4")  # slow enough to act on
    allow = browser.find_element(By.NAME, "allow_postcopy")
    caveat = allow.find_element(By.XPATH, './ancestor::div[contains(@class, "form-group")]').text
    assert "a network break splits its memory between the hosts" in caveat, caveat
    browser.execute_script("arguments[0].click()", allow)
    browser.find_element(By.CSS_SELECTOR, "button[name=review]").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[name=start]"))).click()

    controls = wait.until(ec.visibility_of_element_located((By.ID, "controls")))
    wait.until(lambda d: "MiB" in d.find_element(By.ID, "progress-text").text)
    form = controls.find_element(By.CSS_SELECTOR, "form[data-kind=bandwidth]")
    form.find_element(By.NAME, "value").send_keys("8")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait.until(ec.visibility_of_element_located((By.ID, "controls")))
    WebDriverWait(browser, 30).until(
        lambda d: "Bandwidth limit set to 8 MiB/s" in d.find_element(By.ID, "action-log").text
    )
    action = MigrationAction.objects.get(kind="bandwidth")
    assert action.ok and action.elapsed_ms is not None and action.requested_by_username == "live-operator"

    browser.find_element(By.CSS_SELECTOR, "form[data-kind=postcopy] button").click()
    summary = WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "summary")))
    WebDriverWait(browser, 60).until(lambda d: "Succeeded" in d.find_element(By.ID, "summary").text)
    migration = Migration.objects.get(vm_name="web-shared")
    assert migration.state == "succeeded", summary.text
    assert [a.kind for a in migration.actions.order_by("pk")] == ["bandwidth", "postcopy"]
    assert migration.events.filter(state="action", message__contains="Switched to post-copy").exists()
    assert lab.where("web-shared") == "B"
