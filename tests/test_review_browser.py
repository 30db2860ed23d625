"""Marking examples in the real dashboard (Streamlit server, headless Chromium) and seeing the review.

A copy of the bundled sample's EPIC run (or the session's small poisoned run) is served from a
temporary folder, so marking never writes into sample_data/. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from poisonlens.export import suspects_table
from poisonlens.review import read_review
from poisonlens.store import open_run
from tests import test_dashboard_browser as shared
from tests.test_dashboard_browser import (
    ARTIFACTS,
    REPO,
    free_port,
    idle,
    sample_run,
    shoot,
    wait,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]
browser = shared.browser  # the same headless Chromium fixture
dashboard_runs = shared.dashboard_runs

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture(scope="module")
def marked_run(dashboard_runs, tmp_path_factory) -> Path:
    source = sample_run() or dashboard_runs / "epic-poisoned"
    dest = tmp_path_factory.mktemp("review-runs") / source.name
    shutil.copytree(source, dest)
    return dest


@pytest.fixture(scope="module")
def review_server(marked_run):
    port = free_port()
    env = {**os.environ, "POISONLENS_RUNS": str(marked_run.parent), "POISONLENS_SAMPLES": ""}
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-review-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"streamlit did not answer; see {ARTIFACTS / 'streamlit-review-server.log'}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def body(driver) -> str:
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001 - redrawn while read
        return ""


def rows_matching(driver) -> int | None:
    found = re.search(r"([\d,]+) rows match the filters", body(driver))
    return int(found.group(1).replace(",", "")) if found else None


def click_option(driver, key: str, text: str) -> None:
    """Click the radio option ``text`` of the widget with key ``key``."""
    driver.find_element(By.XPATH, f"//div[contains(@class, 'st-key-{key}')]//label[.//p[text()='{text}']]").click()
    wait(driver, idle)


def test_marking_examples_on_suspects_shows_the_review_in_the_table(review_server, browser, marked_run):
    top = suspects_table(open_run(marked_run))["index"].tolist()[:3]
    browser.get(f"{review_server}/suspects?run={marked_run.name}")
    wait(browser, lambda d: rows_matching(d) is not None and idle(d), timeout=120)
    everything = rows_matching(browser)
    assert "Review: not reviewed yet" in body(browser)

    box = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Examples to mark"]')
    box.send_keys(", ".join(map(str, top)) + Keys.ENTER)
    wait(browser, lambda d: "To mark: " + ", ".join(map(str, sorted(top))) in body(d) and idle(d), timeout=30)
    click_option(browser, "su_mark_verdict", "poison")
    note = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Note (optional)"]')
    note.send_keys("far from every other example of its class" + Keys.ENTER)
    wait(browser, idle)
    save = browser.find_element(By.XPATH, "//div[contains(@class, 'st-key-su_mark_save')]//button")
    assert "3 example(s)" in save.text
    save.click()
    wait(browser, lambda d: "Marked 3 example(s) poison" in body(d) and idle(d), timeout=30)

    review = read_review(open_run(marked_run))
    assert sorted(review["index"]) == sorted(top) and set(review["verdict"]) == {"poison"}
    assert set(review["note"]) == {"far from every other example of its class"}
    wait(browser, lambda d: "Review: 3 poison, 0 clean, 0 unsure" in body(d), timeout=30)
    shoot(browser, "suspects-marked")

    # the table filtered by the review holds exactly the marked examples
    click_option(browser, "su_review", "poison")
    wait(browser, lambda d: rows_matching(d) == 3 and idle(d), timeout=30)
    shoot(browser, "suspects-review-filter")
    click_option(browser, "su_review", "not reviewed")
    wait(browser, lambda d: rows_matching(d) == everything - 3 and idle(d), timeout=30)


def test_the_gradient_map_can_be_coloured_by_the_review(review_server, browser, marked_run):
    from poisonlens.review import mark
    from tests.test_dashboard_browser import FIND_MAP

    mark(open_run(marked_run), suspects_table(open_run(marked_run))["index"].tolist()[3:5], "poison")  # alone too
    browser.get(f"{review_server}/gradient_space?run={marked_run.name}")
    names = ("const gd = mapGd(); return gd && gd.data ? gd.data.map(t => t.name || '') : null;")
    wait(browser, lambda d: d.execute_script(FIND_MAP + names) and idle(d), timeout=120)
    from tests.test_new_run_browser import choose

    choose(browser, "Colour by", "your review")
    wait(browser, lambda d: any(n.startswith("marked poison") for n in (d.execute_script(FIND_MAP + names) or []))
         and idle(d), timeout=60)  # fmt: skip
    shoot(browser, "gradient-space-by-review")
