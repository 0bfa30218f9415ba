"""The built site in a real browser: headless Chromium (Debian's) opens it from disk, with no network.

Types into the search (coordinates, `L1`, `layer:4`, an organization), follows a result to its
own row on a model page, checks the charts, sorts tables by clicking their headers, and fails on
any console error. A screenshot of each step is kept in test-artifacts/.
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


def titles(results: list) -> list[str]:
    return [r.find_element(By.CLASS_NAME, "title").text for r in results]


def column(driver: WebDriver, table: str, index: int) -> list[str]:
    return [row.find_elements(By.TAG_NAME, "td")[index].text for row in driver.find_elements(By.CSS_SELECTOR, f"{table} tbody tr")]


def test_search_leads_to_a_model_page_with_charts_and_tables(browser: WebDriver, site: Path) -> None:
    browser.get((site / "index.html").as_uri())
    assert browser.title.startswith("Super weight catalog")
    assert titles(search(browser, "2533")) == [  # the shared coordinate's page, then both models' weights
        "L1 [2533, 7890]", "meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]", "meta-llama/Llama-2-7b-hf · layer 1 [2533, 7890]"]
    results = search(browser, "[2533, 7890] chat")
    assert titles(results) == ["meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]"]
    screenshot(browser, "report-browser-search.png")
    results[0].click()
    WebDriverWait(browser, 5).until(lambda d: d.current_url.endswith("meta-llama-llama-2-7b-chat-hf.html#w-l1-2533-7890"))
    target = browser.execute_script("return document.querySelector(':target')")
    assert target.tag_name == "tr" and [td.text for td in target.find_elements(By.TAG_NAME, "td")][:3] == ["1", "2533", "7890"]

    assert browser.find_element(By.CSS_SELECTOR, "#activations svg.chart polyline").is_displayed()
    chart = browser.find_element(By.CSS_SELECTOR, "#ablations svg.chart")
    assert len(chart.find_elements(By.CSS_SELECTOR, "g.condition circle.ratio")) == 3  # every row but the baseline
    assert len(chart.find_elements(By.CSS_SELECTOR, "line.reference")) == 3  # x1, the confirm ratio, control A's maximum
    assert column(browser, "#weights", 1) == ["2533", "10"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ablations tbody tr")) == 4
    screenshot(browser, "report-browser-model.png")
    ARTIFACTS.mkdir(exist_ok=True)
    chart.screenshot(str(ARTIFACTS / "report-browser-ablation-chart.png"))
    assert console_errors(browser) == []


@pytest.mark.parametrize(("query", "expected"), [
    ("L1", ["L1 [2533, 7890]", "meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]", "meta-llama/Llama-2-7b-hf · layer 1 [2533, 7890]"]),
    ("layer:4", ["meta-llama/Llama-2-7b-chat-hf · layer 4 [10, 20]"]),
    ("1:2533:7890 hf", ["meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]", "meta-llama/Llama-2-7b-hf · layer 1 [2533, 7890]"]),
    ("meta-llama", ["meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]",
                    "meta-llama/Llama-2-7b-chat-hf · layer 4 [10, 20]", "meta-llama/Llama-2-7b-hf · layer 1 [2533, 7890]"]),
    ("verdict:rejected", ["meta-llama/Llama-2-7b-chat-hf · layer 4 [10, 20]"]),
])
def test_search_understands_layers_coordinates_and_organizations(browser: WebDriver, site: Path, query: str, expected: list[str]) -> None:
    browser.get((site / "index.html").as_uri())
    assert titles(search(browser, query)) == expected


def test_exact_field_matches_rank_before_substrings(browser: WebDriver, site: Path) -> None:
    """"2": the hostile model's layer exactly, then values that start with it (row 2533, col 20),
    then entries that merely contain it ("Llama 2"), whatever their kind."""
    browser.get((site / "index.html").as_uri())
    found = titles(search(browser, "2"))
    assert found[:6] == [f"{HOSTILE} · layer 2 [99, 7]", "L1 [2533, 7890]", "meta-llama/Llama-2-7b-chat-hf · layer 1 [2533, 7890]",
                         "meta-llama/Llama-2-7b-chat-hf · layer 4 [10, 20]", "meta-llama/Llama-2-7b-hf · layer 1 [2533, 7890]", "Llama 2"]


def test_a_hit_on_a_coordinate_opens_its_page(browser: WebDriver, site: Path) -> None:
    browser.get((site / "index.html").as_uri())
    search(browser, "[2533, 7890]")[0].click()
    WebDriverWait(browser, 5).until(lambda d: d.current_url.endswith("coordinates/l1-2533-7890.html"))
    assert column(browser, "#holders", 0) == ["meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf"]
    assert console_errors(browser) == []


def click_header(driver: WebDriver, table: str, name: str) -> None:
    next(th for th in driver.find_elements(By.CSS_SELECTOR, f"{table} thead th") if th.text.startswith(name)).find_element(By.TAG_NAME,
        "button").click()


def test_tables_sort_by_the_column_clicked(browser: WebDriver, site: Path) -> None:
    """Numbers sort as numbers, by the raw value behind what a cell shows (-9000 before -4500,
    which as text would come first); a second click reverses; empty cells go last either way."""
    browser.get((site / "families" / "llama-2.html").as_uri())
    click_header(browser, "#weights", "Super activation")
    assert column(browser, "#weights", 8) == ["-9000", "-9000", "-4500"]
    click_header(browser, "#weights", "Super activation")
    assert column(browser, "#weights", 8) == ["-4500", "-9000", "-9000"]
    click_header(browser, "#weights", "Verdict")
    assert column(browser, "#weights", 4) == ["confirmed", "confirmed", "rejected"]
    sorted_by = browser.find_elements(By.CSS_SELECTOR, "#weights th[aria-sort]")
    assert [(th.text.rstrip(" ↑↓"), th.get_attribute("aria-sort")) for th in sorted_by] == [("Verdict", "ascending")]

    browser.get((site / "index.html").as_uri())
    for _ in ("ascending", "descending"):
        click_header(browser, "#strongest", "PPL ratio")
        assert column(browser, "#strongest", 5) == ["×812.5", "×812.5", ""]
    screenshot(browser, "report-browser-sorted.png")
    assert console_errors(browser) == []
