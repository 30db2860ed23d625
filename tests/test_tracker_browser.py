"""A run written by your own loop, served by `poisonlens ui`, in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_tracker import own_loop_run
from tests.test_ui import POISONLENS, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver")
    root = tmp_path_factory.mktemp("served")
    run_dir, _ = own_loop_run(root / "runs" / "mine")
    port, log = free_port(), root / "ui.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POISONLENS_SAMPLES": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(POISONLENS), "ui", "--runs-dir", str(run_dir.parent), "--port", str(port)],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    yield url, run_dir
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1600,1300",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}"]:  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def settled(driver, title: str, timeout: float = 120) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        heads = [h.text.strip() for h in driver.find_elements(By.CSS_SELECTOR, "h1")]
        running = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']")
        if title in heads and not running:
            return
        time.sleep(0.3)
    raise AssertionError(f"the {title} page did not settle")


def wait_for(found, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := found():
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.parametrize(("path", "title"), [("", "Overview"), ("gradient_space", "Gradient space"),
                                             ("suspects", "Suspects")])  # fmt: skip
def test_each_page_shows_the_tracker_run(served, browser, path, title):
    from selenium.webdriver.common.by import By

    url, run_dir = served
    browser.get(f"{url}/{path}?run={run_dir.name}")
    settled(browser, title)
    time.sleep(1.5)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stAlertContentError']")
    assert run_dir.name in browser.find_element(By.TAG_NAME, "body").text
    if title == "Gradient space":  # no map yet: compute the PCA one from the page, then it shows
        browser.find_element(By.XPATH, "//label[.//p[text()='PCA']]").click()
        button = "//button[.//p[contains(text(), 'Compute the PCA map now')]]"
        wait_for(lambda: browser.find_elements(By.XPATH, button))[0].click()
        wait_for(lambda: browser.find_elements(By.TAG_NAME, "iframe"), timeout=180)
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
        time.sleep(3)  # let the map draw for the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"tracker-{title.lower().replace(' ', '-')}.png"))
