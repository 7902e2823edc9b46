"""The live page survives a restart of Daphne: the browser's websocket says
the connection was lost, reconnects with back-off, and shows what happens
after the restart. No lab needed: the record's state changes by hand."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from migrator import live

from .browser_fixtures import browser_login
from .test_migration_model import make_migration

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _live_status(browser) -> str:
    return browser.find_element(By.ID, "live-status").text


def test_the_live_page_reconnects_after_daphne_restarts(daphne_server, browser):
    migration = make_migration()
    browser_login(browser, daphne_server.url, "auditor-on-watch", "auditors")
    browser.get(daphne_server.url + migration.get_absolute_url())
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: _live_status(d) == "live")
    assert browser.find_element(By.ID, "state-badge").text == "Queued"

    daphne_server.stop()
    wait.until(lambda d: "connection lost" in _live_status(d))
    daphne_server.start()
    # Back-off doubles from 0.5 s; a few attempts fail while Daphne was down.
    wait.until(lambda d: _live_status(d) == "live")

    # A state change published after the restart reaches the page.
    assert migration.claim(1234, "worker-host")
    migration.refresh_from_db()
    live.publish_state(migration)
    wait.until(lambda d: d.find_element(By.ID, "state-badge").text == "Running")
