"""Fixtures for end-to-end tests: a real Daphne serving the project (HTTP and
websockets) on a free port, which a test may stop and start again, and Debian's
headless Chromium driven through Selenium."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hosts import gateway

from .child_env import child_env
from .conftest import make_user

BROWSER_PASSWORD = "browser-pass-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaphneServer:
    """Daphne in a child process, on the test database and the tests' Redis."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(settings.BASE_DIR) / "var" / "test-daphne.log"

    def _up(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self) -> None:
        # Plain http on localhost: the demo's settings (no secure cookies, no https redirect).
        env = child_env(DEBUG="False")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "migrator.asgi:application"],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        assert gateway.wait_for(self._up, 30), f"Daphne did not start ({self.log_path})"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def daphne_server(transactional_db):
    server = DaphneServer()
    server.log_path.parent.mkdir(parents=True, exist_ok=True)
    server.log_path.write_text("")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def daphne(daphne_server) -> str:
    return daphne_server.url


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


def browser_login(browser, base_url: str, username: str, *roles: str):
    """Create a user Daphne can check (PBKDF2, not the tests' fast hasher) and log in."""
    user = make_user(username, *roles)
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(BROWSER_PASSWORD, hasher.salt())
    user.save()
    browser.get(base_url + "/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(BROWSER_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(
        ec.presence_of_element_located((By.XPATH, "//button[normalize-space()='Log out']"))
    )
    return user


@pytest.fixture
def jobs_in_process(transactional_db):
    """Performs queued RQ jobs in this process, which owns the test database.

    An RQ worker cannot run outside the main thread (signal handlers), so a
    thread takes the queued jobs and performs them itself."""
    import django_rq

    from migrator.jobs import QUEUE

    queue = django_rq.get_queue(QUEUE)
    queue.empty()
    stop = threading.Event()

    def perform() -> None:
        while not stop.is_set():
            for job in queue.jobs:
                queue.remove(job)
                job.perform()
            stop.wait(0.3)
        connection.close()

    thread = threading.Thread(target=perform, daemon=True)
    thread.start()
    yield queue
    stop.set()
    thread.join(60)
