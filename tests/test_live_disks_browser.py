"""The live page of a copy-storage migration in Chromium, fed readings shaped
as the lab's libvirt reported them (no lab needed)."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from migrator import live
from migrator.models import completed_stats, final_sample_stats

from .browser_fixtures import browser_login
from .test_live_disks import COMPLETED_ON_DESTINATION, DISK_SIZED, LAST_LIVE, MIB, SETUP, copy_storage_migration

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _width(browser, element_id: str) -> float:
    """The share of the bar, in %, that live.js gave the part."""
    return float(browser.execute_script("return document.getElementById(arguments[0]).style.width;", element_id)[:-1])


def _series(browser, canvas: str, index: int) -> list:
    return browser.execute_script(
        "return Chart.getChart(arguments[0]).data.datasets[arguments[1]].data.map(p => p.y);", canvas, index
    )


def _labels(browser, canvas: str) -> list[str]:
    return browser.execute_script("return Chart.getChart(arguments[0]).data.datasets.map(d => d.label);", canvas)


def test_the_live_page_shows_the_disk_copy_and_ends_on_nothing_remaining(daphne_server, browser):
    migration = copy_storage_migration()
    migration.claim(1, "worker")
    for stats in (SETUP, DISK_SIZED):
        migration.progress(stats)
    browser_login(browser, daphne_server.url, "auditor-on-watch", "auditors")
    browser.get(daphne_server.url + migration.get_absolute_url())
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "live-status").text == "live")

    assert _labels(browser, "chart-rates") == ["dirty rate", "memory throughput", "disk throughput"]
    assert _labels(browser, "chart-remaining") == ["remaining", "disks remaining"]
    # The setup reading knows no sizes: a gap, not a remaining of 0. While
    # the disks are mirrored all of the memory is still to send.
    assert _series(browser, "chart-remaining", 0) == [None, pytest.approx(64 + 256)]
    assert _series(browser, "chart-remaining", 1) == [None, 64]
    assert "disks 0.0 MiB copied of 64.0 MiB" in browser.find_element(By.ID, "progress-text").text

    row = migration.progress(LAST_LIVE)
    live.publish_sample(migration, row.as_dict())
    wait.until(lambda d: len(_series(d, "chart-remaining", 0)) == 3)
    assert _width(browser, "progress-disk") > 0 and _width(browser, "progress-memory") > 0
    assert browser.find_element(By.ID, "stat-disk-throughput").text.endswith("MiB/s")

    final = completed_stats(LAST_LIVE, COMPLETED_ON_DESTINATION)
    row = migration.progress(final_sample_stats(final))
    live.publish_sample(migration, row.as_dict())
    migration.finish(final, note="The VM is running on b.")
    live.publish_state(migration)
    wait.until(lambda d: d.find_element(By.ID, "state-badge").text == "Succeeded")
    remaining = _series(browser, "chart-remaining", 0)
    assert remaining[-1] == 0 and remaining[1] > remaining[2] > remaining[3]
    assert _series(browser, "chart-remaining", 1)[-1] == 0
    bar = browser.find_element(By.ID, "progress-memory")
    assert bar.get_attribute("aria-valuenow") == "100"
    assert _width(browser, "progress-memory") + _width(browser, "progress-disk") == pytest.approx(100)
    assert _width(browser, "progress-disk") == pytest.approx(100 * 64 * MIB / (268828672 + 64 * MIB), abs=0.1)
    summary = browser.find_element(By.ID, "summary")
    assert summary.find_element(By.CSS_SELECTOR, '[data-field="disk_copy"]').text == "64.0 MiB of 64.0 MiB"
    assert "64.0 MiB of disks copied" in browser.find_element(By.ID, "progress-text").text

    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "live-status").text == "live")
    assert _series(browser, "chart-remaining", 0)[-1] == 0
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="disk_copy"]').text == "64.0 MiB of 64.0 MiB"
    assert browser.find_element(By.ID, "progress-memory").get_attribute("aria-valuenow") == "100"
