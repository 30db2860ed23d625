"""Ways to look, and Stop/Resume, in the real browser (issue 17): the real Streamlit server in
headless Chromium, with the fixtures of tests/test_dashboard_browser.py.

- a filter expression typed on Gradient space leaves only the matching points on the map, and a
  hostile one is refused in one line;
- looking an example up opens its nearest neighbours (gradient space, thumbnails);
- New run's Stop interrupts a run it launched and Resume finishes it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.test_dashboard_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    FIND_MAP,
    browser,
    heading,
    idle,
    sample_run,
    server,
    wait,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from poisonlens.store import open_run  # noqa: E402


@pytest.fixture(scope="module")
def dashboard_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-extra-runs")


@pytest.fixture(scope="module")
def shown_run(dashboard_runs) -> Path:
    run = sample_run()
    if run is None:
        pytest.skip("the bundled sample run with its map is needed")
    return run


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-results")


def body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def type_into(driver, label: str, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text, Keys.ENTER)


def class_traces(driver) -> list[str]:
    """The classes of the map's per-class traces (colour by class: 'class 3') drawn now."""
    names = driver.execute_script(FIND_MAP + "const gd = mapGd(); return gd ? gd.data.map(t => t.name) : [];")
    return [str(n)[6:] for n in names if re.fullmatch(r"class \d+", str(n))]


def test_a_filter_expression_leaves_only_its_points_on_the_map(server, browser, shown_run):  # noqa: F811
    browser.get(f"{server}/gradient_space?run={shown_run.name}")
    wait(browser, lambda d: heading(d) == "Gradient space" and idle(d) and class_traces(d), timeout=180)
    assert len(class_traces(browser)) == 10
    type_into(browser, "Filter expression", "label == 3 and drift > 0.5")
    wait(browser, lambda d: "examples match" in body(d) and idle(d), timeout=120)
    wait(browser, lambda d: class_traces(d) == ["3"], timeout=60)
    match = re.search(r"([\d,]+) of 1,347 examples match", body(browser))
    n = int(match[1].replace(",", ""))
    shown = browser.execute_script(FIND_MAP + "const gd = mapGd(); return gd.data.find(t => t.name === 'class 3').x.length;")
    assert 0 < shown == n < 1347
    browser.save_screenshot(str(ARTIFACTS / "gradient-space-filter.png"))
    type_into(browser, "Filter expression", "__import__('os').system('id')")
    wait(browser, lambda d: "filter: a function call is not allowed" in body(d), timeout=60)
    assert len(class_traces(browser)) == 10  # a refused expression filters nothing
    type_into(browser, "Filter expression", "")
    wait(browser, lambda d: len(class_traces(d)) == 10 and idle(d), timeout=60)


def test_an_example_opens_with_its_nearest_neighbours(server, browser, shown_run):  # noqa: F811
    browser.get(f"{server}/gradient_space?run={shown_run.name}")
    wait(browser, lambda d: heading(d) == "Gradient space" and idle(d) and class_traces(d), timeout=180)
    type_into(browser, "Find an example by index", "5")
    panel = '[class*="st-key-gs_neighbours"]'
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, panel) and idle(d), timeout=120)
    text = browser.find_element(By.CSS_SELECTOR, panel).text
    assert "Nearest neighbours of example 5" in text and "Euclidean distance over the snapshot" in text
    browser.execute_script("document.querySelector(arguments[0]).scrollIntoView()", panel)
    time.sleep(1)
    browser.save_screenshot(str(ARTIFACTS / "gradient-space-neighbours.png"))
    if "penultimate features" in text:  # the sample stores 4 feature columns
        browser.find_element(By.XPATH, "//div[contains(@class,'st-key-gs_neighbours')]"
                                       "//label[.//p[contains(text(),'penultimate features')]]").click()
        wait(browser, lambda d: "4 penultimate-feature columns" in d.find_element(By.CSS_SELECTOR, panel).text
             and idle(d), timeout=60)


def test_stop_and_resume_a_run_started_from_the_form(server, browser):  # noqa: F811
    browser.get(f"{server}/new_run")
    wait(browser, lambda d: heading(d) == "New run" and idle(d), timeout=120)
    runs_dir = Path(re.search(r"New runs go to (\S+) ", body(browser))[1])
    for label, value in (("Epochs", 40), ("Width", 4), ("Snapshot every (T)", 10)):
        box = browser.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)
    browser.find_element(By.XPATH, "//label[.//p[text()='none']]").click()  # no map afterwards
    browser.find_element(By.CSS_SELECTOR, 'input[aria-label^="Run name"]').send_keys("stoppable")
    browser.find_element(By.XPATH, "//button[.//p[text()='Start training']]").click()
    wait(browser, lambda d: "Started stoppable" in body(d) or "Not started" in body(d), timeout=120)
    assert "Not started" not in body(browser), body(browser)
    wait(browser, lambda d: re.search(r"epoch ([1-9]\d*) of 40", body(d)), timeout=240)
    browser.find_element(By.XPATH, "//button[.//p[text()='Stop']]").click()
    wait(browser, lambda d: "stoppable: interrupted" in body(d) and idle(d), timeout=120)
    browser.save_screenshot(str(ARTIFACTS / "new-run-stopped.png"))
    # the sidebar's run label changed (running -> interrupted): no stale label reached the address
    assert "The link names the run" not in body(browser), body(browser)
    stopped = open_run(runs_dir / "stoppable").metrics()["epoch"].max()
    assert stopped < 40
    browser.find_element(By.XPATH, "//button[.//p[text()='Resume']]").click()
    deadline = time.time() + 400
    while time.time() < deadline and "stoppable: finished" not in body(browser):
        assert "stoppable: failed" not in body(browser), body(browser)
        time.sleep(1)
    assert "stoppable: finished" in body(browser), body(browser)
    browser.save_screenshot(str(ARTIFACTS / "new-run-resumed.png"))
    assert open_run(runs_dir / "stoppable").metrics()["epoch"].tolist() == list(range(41))


def test_one_class_zooms_the_axes_to_that_class(server, browser, shown_run):  # noqa: F811
    browser.get(f"{server}/gradient_space?run={shown_run.name}")
    wait(browser, lambda d: heading(d) == "Gradient space" and idle(d) and class_traces(d), timeout=180)
    ranges = FIND_MAP + "const gd = mapGd(); return [gd._fullLayout.xaxis.range, gd._fullLayout.yaxis.range];"
    (x0, x1), (y0, y1) = browser.execute_script(ranges)
    browser.find_element(By.XPATH, "//label[.//p[text()='one class']]").click()
    wait(browser, lambda d: idle(d) and not class_traces(d), timeout=120)  # coloured by cluster now
    time.sleep(1)
    (a0, a1), (b0, b1) = browser.execute_script(ranges)
    assert (a1 - a0) * (b1 - b0) < 0.6 * (x1 - x0) * (y1 - y0), ((x0, x1, y0, y1), (a0, a1, b0, b1))
    browser.save_screenshot(str(ARTIFACTS / "gradient-space-one-class-zoomed.png"))
