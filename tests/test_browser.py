"""End to end: a real browser (Debian's headless Chromium through Selenium)
logs in, measures a VM's dirty page rate and watches the readings arrive,
runs the wizard on the lab and reads the prediction, watches the progress bar
reach 100 % and the summary appear, then compares predicted with actual,
against a real Daphne serving HTTP and websockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hosts import inventory
from migrator.models import Migration

from .browser_fixtures import browser_login

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"


def test_it_measures_predicts_migrates_and_compares(lab, lab_hosts, guest, daphne, browser, jobs_in_process):
    a, b = lab_hosts
    guest("web-shared")
    inventory.refresh_host(a)
    wait = WebDriverWait(browser, 60)
    browser_login(browser, daphne, "web-operator", "operators")
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, "Migrate a VM"))).click()
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "web-shared"))).click()
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "Choose lab-b"))).click()
    bandwidth = wait.until(ec.presence_of_element_located((By.NAME, "bandwidth_mib_s")))
    bandwidth.clear()
    bandwidth.send_keys("24")  # slow enough to watch the bar move
    browser.find_element(By.CSS_SELECTOR, "button[name=review]").click()
    # Measure on the review step: one round of the 1x/2x/4x curve, readings over the websocket.
    prediction = wait.until(ec.presence_of_element_located((By.ID, "prediction"))).text
    assert "Measure the VM's dirty page rate first" in prediction, prediction
    duration = browser.find_element(By.CSS_SELECTOR, "#dirty-rate-panel [name=duration_s]")
    duration.clear()
    duration.send_keys("7")
    browser.find_element(By.CSS_SELECTOR, "#dirty-rate-panel button[type=submit]").click()
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dirty-rate-history tr:not(.empty)")) >= 3
    )
    assert "MiB/s" in browser.find_element(By.ID, "dirty-rate-latest").text
    # Predict from those readings, then migrate.
    wait.until(ec.element_to_be_clickable((By.ID, "update-prediction"))).click()
    start = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[name=start]")))
    prediction = browser.find_element(By.ID, "prediction").text
    assert "Converges." in prediction and "total time" in prediction.lower(), prediction
    assert "has not been migrated before" in prediction, prediction
    # How sure: a range next to the point estimate, the model's own before any history.
    assert browser.find_element(By.ID, "predicted-range").text.startswith("likely "), prediction
    assert "No earlier pre-copy migration to learn from yet" in prediction, prediction
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "review.png"))
    start.click()
    wait.until(ec.presence_of_element_located((By.ID, "progress-memory")))
    WebDriverWait(browser, 120).until(
        lambda d: d.find_element(By.ID, "progress-memory").get_attribute("aria-valuenow") == "100"
    )
    summary = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "summary")))
    assert "Succeeded" in summary.text
    assert "Predicted:" in summary.text and "(likely " in summary.text, summary.text
    time.sleep(1)  # let Bootstrap's width transition finish before the picture
    browser.save_screenshot(str(SCREENSHOTS / "migration.png"))
    # Compare: the finished migration's page sets predicted against actual.
    browser.refresh()
    table = wait.until(ec.visibility_of_element_located((By.ID, "predicted-vs-actual"))).text
    assert "total time" in table.lower() and "converges" in table, table
    assert browser.find_element(By.ID, "record-range").text.startswith("likely "), table
    migration = Migration.objects.get(vm_name="web-shared")
    assert migration.state == "succeeded" and migration.samples.exists()
    assert migration.prediction["available"] and migration.prediction["plan"]["verdict"] == "converges"
    assert lab.where("web-shared") == "B"
