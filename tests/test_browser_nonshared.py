"""End to end in Chromium against Daphne and the lab: an operator migrates
db-local (a local qcow2 vda, a read-only vdb, a shareable vdc) from lab-a to
lab-b with the wizard's default plan, then back, and each time the disk
arrived, the source was freed and the page showed the disk copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from migrator.models import Migration, MigrationState

from .browser_fixtures import browser_login
from .test_nonshared_lab import assert_pattern, disk_path, write_pattern

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
HOST_KEYS = {"lab-a": "A", "lab-b": "B"}


def migrate_in_browser(browser, daphne: str, destination: str) -> str:
    """Walk the wizard with every default; return the summary's disk line."""
    wait = WebDriverWait(browser, 90)
    browser.get(daphne + "/")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "Migrate a VM"))).click()
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, "db-local"))).click()
    plan = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".disk-plan"))).text
    assert "Copy vda (qcow2, 64 MiB)" in plan and "vdb stays" in plan and "vdc stays" in plan, plan
    wait.until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, f"Choose {destination}"))).click()
    vda = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=disks][value=vda]")))
    assert vda.is_selected()
    assert not browser.find_element(By.CSS_SELECTOR, "input[name=disks][value=vdb]").is_enabled()
    assert browser.find_element(By.NAME, "remove_source_images").is_selected()
    browser.find_element(By.CSS_SELECTOR, "button[name=review]").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[name=start]"))).click()
    summary = wait.until(ec.visibility_of_element_located((By.ID, "summary")))
    wait.until(lambda d: "Succeeded" in d.find_element(By.ID, "summary").text)
    disk_copy = summary.find_element(By.CSS_SELECTOR, '[data-field="disk_copy"]').text
    bar = browser.execute_script("return document.getElementById('progress-disk').style.width;")
    assert float(bar.rstrip("%")) > 0, "the bar has a disk part"
    parameters = browser.find_element(By.ID, "parameters").text
    assert "Copy disks vda (qcow2, 64 MiB)" in parameters and "Source images after success removed" in parameters
    return disk_copy


def test_an_operator_migrates_db_local_there_and_back(lab, lab_hosts, guest, daphne, browser, jobs_in_process):
    a, b = lab_hosts
    guest("db-local")
    vda, vdb, vdc = (disk_path(a, "db-local", t) for t in ("vda", "vdb", "vdc"))
    write_pattern(lab, "A", "db-local", vda)
    read_only = {key: lab.host_path(key, vdb).stat().st_mtime for key in ("A", "B")}
    shareable = lab.host_path("A", vdc).stat().st_mtime
    browser_login(browser, daphne, "disk-operator", "operators")

    for source, destination in (("lab-a", "lab-b"), ("lab-b", "lab-a")):
        disk_copy = migrate_in_browser(browser, daphne, destination)
        assert disk_copy.endswith("of 64.0 MiB"), disk_copy
        migration = Migration.objects.filter(vm_name="db-local").first()
        assert migration.state == MigrationState.SUCCEEDED and migration.destination_name == destination
        assert any(s.disk_total_bytes for s in migration.samples.all())
        assert lab.where("db-local") == HOST_KEYS[destination]
        assert not lab.host_path(HOST_KEYS[source], vda).exists(), f"{source} no longer holds vda"
        lab.wait_tick("db-local", HOST_KEYS[destination])
        if destination == "lab-b":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(SCREENSHOTS / "copy-storage.png"))

    lab.stop_guest("db-local")
    assert_pattern(lab, "A", vda)
    assert {key: lab.host_path(key, vdb).stat().st_mtime for key in ("A", "B")} == read_only
    assert lab.host_path("A", vdc).stat().st_mtime == shareable
