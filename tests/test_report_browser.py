"""The built site in a real browser: headless Chromium (Debian's) opens it from disk, with no network.

Types into the search, follows a result to a model page, checks its charts and tables, and fails
on any console error. A screenshot of each step is kept in test-artifacts/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from reports.build import build_site
from report_samples import HOSTILE, catalog_scans

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(catalog_scans(), tmp_path_factory.mktemp("report") / "site").out_dir


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), \
        "headless Chromium is missing: apt-get install chromium chromium-driver (see .ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # explicit: nothing downloaded
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def search(driver: WebDriver, query: str) -> list:
    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys(query)
    results = driver.find_element(By.ID, "search-results")
    WebDriverWait(driver, 5).until(lambda d: results.is_displayed())
    return results.find_elements(By.CSS_SELECTOR, "li a")


def screenshot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def test_search_leads_to_a_model_page_with_charts_and_tables(browser: WebDriver, site: Path) -> None:
    browser.get((site / "index.html").as_uri())
    assert browser.title.startswith("Super weight catalog")
    assert len(search(browser, "2533")) == 2  # the coordinate both Llama 2 models share
    results = search(browser, "[2533, 7890] chat")
    assert [r.find_element(By.CLASS_NAME, "title").text for r in results] == [
        "meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]"]
    screenshot(browser, "report-browser-search.png")
    results[0].click()
    WebDriverWait(browser, 5).until(lambda d: d.current_url.endswith("meta-llama-llama-2-7b-chat-hf.html#weights"))

    assert browser.find_element(By.CSS_SELECTOR, "#activations svg.chart polyline").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "#ablations svg.chart rect").is_displayed()
    weight_rows = browser.find_elements(By.CSS_SELECTOR, "#weights tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in weight_rows] == ["2533", "10"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ablations tbody tr")) == 4
    screenshot(browser, "report-browser-model.png")
    assert console_errors(browser) == []


def test_hostile_names_in_results_are_text(browser: WebDriver, site: Path) -> None:
    browser.get((site / "families" / "llama-2.html").as_uri())
    scripts = len(browser.find_elements(By.TAG_NAME, "script"))
    results = search(browser, "alert(1)")
    titles = [r.find_element(By.CLASS_NAME, "title").text for r in results]
    assert HOSTILE in titles  # shown as the literal name, not parsed as markup
    assert len(browser.find_elements(By.TAG_NAME, "script")) == scripts
    assert browser.execute_script("return document.querySelectorAll('#search-results script').length") == 0
    model = next(r for r in results if r.get_attribute("class") == "result-model")
    assert model.find_element(By.CLASS_NAME, "title").text == HOSTILE
    model.click()
    WebDriverWait(browser, 5).until(lambda d: d.current_url.endswith("models/script-alert-1-script.html"))
    assert browser.find_element(By.TAG_NAME, "h1").text == HOSTILE
    assert console_errors(browser) == []
