"""The review page in a real headless browser (Debian's chromium driven by Selenium): it lists a held job, plays its
video, shows the gate table, approves it, and the tenant's job becomes deliverable. /docs (Swagger UI) lists the
operations with every host but the gateway unreachable: its assets come from the installed package, not a CDN."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from review_harness import live_gateway

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: pip install -e '.[dev]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium + chromedriver (Debian packages chromium chromium-driver; `make chromium`)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required",
                     # No network but the gateway: a page that needs a CDN shows nothing.
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def _resource_hosts(driver) -> set[str]:
    return set(driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)"))


def test_review_page_approves_a_held_job_and_docs_work_offline(tmp_path, monkeypatch, browser):
    with live_gateway(tmp_path, monkeypatch) as gw:
        key, operator, job_id = gw.held_job()
        wait = WebDriverWait(browser, 15)

        browser.get(f"{gw.url}/review")
        browser.find_element(By.ID, "key").send_keys(operator)
        browser.find_element(By.ID, "load").click()
        row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-job='{job_id}']"))
        assert "photo.minor" in row.text
        row.click()
        video = wait.until(lambda d: d.find_element(By.ID, "video") if d.execute_script(
            "return document.getElementById('video').readyState") >= 2 else None)
        browser.execute_script("arguments[0].play()", video)
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", video) > 0)
        gates = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
                 for r in browser.find_elements(By.CSS_SELECTOR, "#gates tbody tr")}
        assert len(gates) == 8 and gates["content_safety"] == "pass"
        checks = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
                  for r in browser.find_elements(By.CSS_SELECTOR, "#checks tbody tr")}
        assert checks["photo.minor"] == "unavailable"
        assert browser.execute_script("return document.getElementById('sheet').naturalWidth") > 0
        browser.find_element(By.ID, "approve").click()
        wait.until(lambda d: "is now succeeded" in d.find_element(By.ID, "message").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#queue tbody tr") == []
        content = httpx.get(f"{gw.url}/v1/videos/{job_id}/content", headers={"Authorization": f"Bearer {key}"})
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"
        assert _resource_hosts(browser) <= {f"127.0.0.1:{gw.port}"}

        browser.get(f"{gw.url}/docs")
        started = time.monotonic()
        operations = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path") or None)
        paths = {element.get_attribute("data-path") or element.text for element in operations}
        assert {"/v1/videos", "/v1/review/jobs", "/v1/review/jobs/{job_id}/approve"} <= paths, paths
        assert _resource_hosts(browser) <= {f"127.0.0.1:{gw.port}"}, "the docs page loaded something from elsewhere"
        assert time.monotonic() - started < 15
