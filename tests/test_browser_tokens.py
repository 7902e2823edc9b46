"""The API as a user meets it, in a real browser against a real Daphne: the
menu leads to the tokens page, a new token is shown once, a script uses it,
the API's docs render from the project's own files, and revoking the token
in the browser locks the script out."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from migrator.api.models import ApiToken

from .browser_fixtures import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def api_get(base_url: str, path: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_user_creates_uses_and_revokes_a_token(daphne, browser):
    wait = WebDriverWait(browser, 30)
    browser_login(browser, daphne, "api-auditor", "auditors")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "API tokens"))).click()
    wait.until(ec.presence_of_element_located((By.NAME, "name"))).send_keys("nightly report")
    browser.find_element(By.NAME, "expires_in_days").send_keys("7")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    shown = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#new-token code"))).text.strip()
    assert shown.startswith("vmm_")
    assert "shown only this once" in browser.find_element(By.ID, "new-token").text
    row = browser.find_element(By.ID, "tokens").text
    assert "nightly report" in row and shown[:12] in row and shown not in row

    status, body = api_get(daphne, "/api/v1/migrations/", shown)
    assert status == 200 and body["results"] == []
    status, body = api_get(daphne, "/api/v1/certificates/", shown)
    assert status == 403 and body == {"detail": "Your role does not allow this."}

    # The docs: Swagger UI drawn from the project's static files, listing the endpoints.
    browser.get(daphne + "/api/v1/docs/")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) > 10)
    paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert "/api/v1/migrations/" in paths, sorted(paths)[:20]
    scripts = [s.get_attribute("src") or "" for s in browser.find_elements(By.TAG_NAME, "script")]
    assert all(src.startswith(daphne) for src in scripts if src), scripts

    browser.get(daphne + "/account/tokens/")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#tokens button[type=submit]"))).click()
    alert = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".alert-success"))).text
    assert "is revoked" in alert
    assert "revoked" in browser.find_element(By.ID, "tokens").text
    status, body = api_get(daphne, "/api/v1/migrations/", shown)
    assert status == 401 and "revoked" in body["detail"]
    assert ApiToken.objects.get().state == "revoked"
