"""End to end: a real browser (Debian's headless Chromium through Selenium)
logs in, measures a VM's dirty page rate and watches the readings arrive,
runs the wizard on the lab and reads the prediction, watches the progress bar
reach 100 % and the summary appear, then compares predicted with actual,
against a real Daphne serving HTTP and websockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hosts import gateway, inventory
from migrator.jobs import QUEUE
from migrator.models import Migration

from .conftest import make_user

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
PASSWORD = "browser-pass-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    return f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture
def daphne(transactional_db):
    port = _free_port()
    log = open(Path(settings.BASE_DIR) / "var" / "test-daphne.log", "w")  # noqa: SIM115
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CHANNELS_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        "DEBUG": "False",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "migrator.asgi:application"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert gateway.wait_for(up, 30), "Daphne did not start (var/test-daphne.log)"
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def test_it_measures_predicts_migrates_and_compares(lab, lab_hosts, guest, daphne, browser):
    a, b = lab_hosts
    guest("web-shared")
    inventory.refresh_host(a)
    operator = make_user("web-operator", "operators")
    hasher = PBKDF2PasswordHasher()  # the Daphne process's hasher, not the tests' fast one
    operator.password = hasher.encode(PASSWORD, hasher.salt())
    operator.save()
    queue = django_rq.get_queue(QUEUE)
    queue.empty()
    stop = threading.Event()

    def worker() -> None:
        # The job runs in this process, which owns the test database; an RQ
        # worker cannot run outside the main thread (signal handlers), so the
        # thread takes the queued jobs and performs them itself.
        while not stop.is_set():
            for job in queue.jobs:
                queue.remove(job)
                job.perform()
            stop.wait(0.3)
        connection.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(daphne + "/login/")
        browser.find_element(By.NAME, "username").send_keys("web-operator")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
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
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "review.png"))
        start.click()
        wait.until(ec.presence_of_element_located((By.ID, "progress-memory")))
        WebDriverWait(browser, 120).until(
            lambda d: d.find_element(By.ID, "progress-memory").get_attribute("aria-valuenow") == "100"
        )
        summary = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "summary")))
        assert "Succeeded" in summary.text
        assert "Predicted:" in summary.text
        time.sleep(1)  # let Bootstrap's width transition finish before the picture
        browser.save_screenshot(str(SCREENSHOTS / "migration.png"))
        # Compare: the finished migration's page sets predicted against actual.
        browser.refresh()
        table = wait.until(ec.visibility_of_element_located((By.ID, "predicted-vs-actual"))).text
        assert "total time" in table.lower() and "converges" in table, table
    finally:
        stop.set()
        thread.join(30)
    migration = Migration.objects.get(vm_name="web-shared")
    assert migration.state == "succeeded" and migration.samples.exists()
    assert migration.prediction["available"] and migration.prediction["plan"]["verdict"] == "converges"
    assert lab.where("web-shared") == "B"
