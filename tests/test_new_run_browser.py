"""New run in the real browser: the form, submitted with the bundled poison set, starts a run
that finishes; its progress is shown above the form and the sidebar switches to it.

The real Streamlit server in headless Chromium, with the fixtures of
tests/test_dashboard_browser.py (imported, not copied). The other pages' runs and the Compare
results are not needed here, so those fixtures are replaced by empty folders.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.test_dashboard_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    browser,
    heading,
    idle,
    server,
    wait,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from poisonlens.store import open_run  # noqa: E402

DEMO = "sample_data/poisons/demo/poisons.npz"
NAME = "browser-run"


@pytest.fixture(scope="module")
def dashboard_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-sample-runs")


@pytest.fixture(scope="module")
def shown_run(dashboard_runs) -> Path:
    return dashboard_runs / "none"


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-results")


def body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def set_number(driver, label: str, value: int) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def choose(driver, label: str, text: str) -> None:
    """Pick the option containing ``text`` in the selectbox labelled ``label``."""
    box = driver.find_element(
        By.XPATH, f'//div[@data-testid="stSelectbox"][.//label[normalize-space()="{label}"]]'
    )
    box.find_element(By.CSS_SELECTOR, "input").click()
    option = wait(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, '[role="option"]')
                                     if text in o.text])
    option[0].click()


def top(driver, css: str) -> float | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].rect["y"] if found else None


def test_the_form_runs_the_bundled_poison_set_to_the_end(server, browser):  # noqa: F811
    browser.get(f"{server}/new_run")
    wait(browser, lambda d: heading(d) == "New run" and idle(d))
    runs_dir = Path(re.search(r"New runs go to (\S+) ", body(browser))[1])
    set_number(browser, "Epochs", 2)
    set_number(browser, "Width", 4)
    choose(browser, "Poison set", DEMO)
    browser.find_element(By.XPATH, "//label[.//p[text()='pca']]").click()
    browser.find_element(By.CSS_SELECTOR, 'input[aria-label^="Run name"]').send_keys(NAME)
    browser.find_element(By.XPATH, "//button[.//p[text()='Start training']]").click()
    wait(browser, lambda d: f"Started {NAME}" in body(d) or "Not started" in body(d), timeout=120)
    assert "Not started" not in body(browser), body(browser)

    # the live progress is drawn above the form, in view without scrolling
    form = '[data-testid="stForm"]'
    wait(browser, lambda d: top(d, '[data-testid="stProgress"]') is not None, timeout=120)
    assert top(browser, '[data-testid="stProgress"]') < top(browser, form)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "new-run-progress.png"))

    # the sidebar's run picker switches to the new run once its run store exists
    sidebar = '[data-testid="stSidebar"]'
    wait(browser, lambda d: f"/{NAME}" in d.find_element(By.CSS_SELECTOR, sidebar).text, timeout=180)
    assert f"run={NAME}" in browser.current_url

    deadline = time.time() + 400
    while time.time() < deadline and f"{NAME}: finished" not in body(browser):
        assert f"{NAME}: failed" not in body(browser), body(browser)
        time.sleep(1)
    assert f"{NAME}: finished" in body(browser), body(browser)
    browser.save_screenshot(str(ARTIFACTS / "new-run-finished.png"))
    run = open_run(runs_dir / NAME)
    assert run.meta["status"] == "finished"
    assert run.examples()["is_poison"].sum() == 67  # the bundled set's poisons were trained on
    assert run.config["poisons"].endswith(DEMO)
    assert run.projection("pca") is not None
