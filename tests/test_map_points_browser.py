"""The gradient map's WebGL points renderer at 200,000 examples, in the real server and headless Chromium.

A synthetic 200,000-example, 3-snapshot store (``bench.dashboard.build_run``) with a cheap fixed
linear map written as its UMAP map (this tests the map component, not UMAP). Every example is
drawn as a point: by the component's own CPU rasterizer, which the frame picks where WebGL is
software (SwiftShader here), or by its WebGL2 program (``?raster=gpu``); the tests move the epoch
slider, draw a box, click and hover a point, check what comes back to the page and what the frame
fetched and uploaded, and that both rasters draw the same picture.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import test_dashboard_browser as real
from tests.test_dashboard_browser import ARTIFACTS, idle, panel_text, selected_in_table, wait

browser = real.browser  # the same headless Chromium fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

N = 200_000
RUN = "points-200k"


@pytest.fixture(scope="module")
def big_runs(tmp_path_factory) -> Path:
    """A folder holding the 200,000-example run with its (linear) map.

    Parameters
    ----------
    tmp_path_factory : pytest's factory of temporary folders
    """
    from bench.dashboard import build_run
    from poisonlens.store import RunWriter, open_run

    root = tmp_path_factory.mktemp("big-runs")
    rng = np.random.default_rng(2)
    run = build_run(root / RUN, labels=rng.integers(0, 10, N), images=rng.integers(0, 256, (N, 8, 8, 1), dtype=np.uint8),
                    epochs=[0, 10, 20], seed=2)
    reader = open_run(run)
    w = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    frames = [pd.DataFrame({"epoch": np.full(N, e, np.int32), "index": np.arange(N, dtype=np.int64),
                            "x": (reader.gradients(e) @ w)[:, 0], "y": (reader.gradients(e) @ w)[:, 1]})
              for e in reader.snapshot_epochs()]
    RunWriter(run).write_projection("umap", pd.concat(frames, ignore_index=True))
    return root


@pytest.fixture(scope="module")
def big_server(big_runs):
    """The dashboard's URL, served over ``big_runs``.

    Parameters
    ----------
    big_runs : the folder of :func:`big_runs`
    """
    from bench.dashboard import start_server

    proc, url = start_server(big_runs)
    yield url
    proc.terminate()
    proc.wait(10)


def in_frame(driver, script: str, *args):
    """Run ``script`` inside the map component's iframe (None when there is none yet).

    Parameters
    ----------
    driver : the Selenium driver, on the page (left there)
    script : JavaScript returning a value, run in the frame (its ``P``, ``screenOf`` ... in scope)
    *args : the script's ``arguments``
    """
    for frame in driver.find_elements(By.TAG_NAME, "iframe"):
        driver.switch_to.frame(frame)
        try:
            if driver.execute_script("return typeof P !== 'undefined'"):
                return driver.execute_script(script, *args)
        finally:
            driver.switch_to.default_content()
    return None


def drag(driver, element, x0: int, y0: int, dx: int, dy: int, steps: int = 10) -> None:
    """Press at (x0, y0) from the element's centre and drag by (dx, dy) in small, paced steps, as a hand does.

    Parameters
    ----------
    driver : the Selenium driver, inside the map's frame
    element : the canvas pressed on
    x0, y0 : the press, in pixels from the element's centre
    dx, dy : the drag, in pixels
    steps : moves the drag is made of
    """
    chain = ActionChains(driver).move_to_element_with_offset(element, x0, y0).click_and_hold().pause(0.3)
    for _ in range(steps):
        chain = chain.move_by_offset(dx // steps, dy // steps).pause(0.15)
    chain.release().perform()


@contextmanager
def points_frame(driver):
    """Inside the points renderer's iframe for the ``with`` block (back in the page after it).

    Parameters
    ----------
    driver : the Selenium driver, on the page
    """
    for frame in driver.find_elements(By.TAG_NAME, "iframe"):
        driver.switch_to.frame(frame)
        if driver.find_elements(By.CSS_SELECTOR, ".pl-bar"):
            break
        driver.switch_to.default_content()
    try:
        yield
    finally:
        driver.switch_to.default_content()


def point_on_screen(driver, step: int, margin: list[int]) -> list:
    """[index, x, y] of a shown example drawn inside the canvas less ``margin``, every ``step``-th tried.

    Parameters
    ----------
    driver : the Selenium driver, on the page
    step : try examples 0, step, 2 * step, ...
    margin : [left, top, right, bottom] pixels kept clear of the canvas's edges
    """
    return in_frame(driver, """
        const a = P.args, off = P.slot * P.n * 2, [step, m] = arguments;
        for (let i = 0; i < P.n; i += step) {
          if (P.codes[i] === a.palette.length - 1) continue;
          const s = screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));
          if (s[0] > m[0] && s[1] > m[1] && s[0] < P.width - m[2] && s[1] < P.height - m[3]) return [i, s[0], s[1]];
        }
        return null;""", step, margin)


def screen_of(driver, index: int) -> list[float]:
    """[x, y] in canvas pixels where example ``index`` is drawn at the shown snapshot.

    Parameters
    ----------
    driver : the Selenium driver, on the page
    index : the example
    """
    return in_frame(driver, """const a = P.args, off = P.slot * P.n * 2, i = arguments[0];
        return screenOf(toGl(P.xy[off + 2 * i], a.x_range), toGl(P.xy[off + 2 * i + 1], a.y_range));""", index)


def state(driver) -> str | None:
    """What the points renderer drew last ('slot|colour codes URL|message'), or None.

    Parameters
    ----------
    driver : the Selenium driver, on the page
    """
    return in_frame(driver, "return document.body.dataset.mapState || null")


def test_slider_box_and_click_on_200000_points(big_server, browser):
    browser.get(f"{big_server}/gradient_space?run={RUN}&epoch=20")
    wait(browser, lambda d: state(d) is not None and idle(d), timeout=180)
    assert in_frame(browser, "return P.n") == N
    # headless Chromium without a GPU: WebGL is SwiftShader, and the frame draws on the CPU
    assert "swiftshader" in in_frame(browser, "return P.rendererName").lower()
    assert in_frame(browser, "return P.raster") == "cpu"
    assert in_frame(browser, "return P.drawn") == N  # every example a point
    assert "every one of the 200,000 examples shown is drawn as a point" in browser.find_element(By.TAG_NAME, "body").text.lower()

    # the epoch slider: the frame moves to another snapshot's row of the positions it already has
    before = state(browser)
    thumb = browser.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]')
    browser.execute_script("arguments[0].focus();", thumb)
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    wait(browser, lambda d: state(d) not in (None, before) and idle(d), timeout=60)
    assert state(browser).split("|")[0] == "1"  # epoch 10 is the second snapshot
    sizes = in_frame(browser, "return performance.getEntriesByType('resource').filter(r => r.name.includes('/media/'))"
                              ".map(r => r.encodedBodySize || r.decodedBodySize)")
    # one file as large as the positions (fetched once); the rest colour codes and overlay indices
    # (plotly.js is not loaded here)
    assert sum(size > N + 16 for size in sizes) == 1

    # a box drawn over the middle of the map: the server lists every example inside it
    with points_frame(browser):
        browser.find_element(By.XPATH, "//button[text()='Box']").click()
        canvas = browser.find_element(By.CSS_SELECTOR, "canvas")
        w, h = canvas.size["width"], canvas.size["height"]
        drag(browser, canvas, -w // 10, -h // 10, w // 5, h // 5)
    wait(browser, lambda d: selected_in_table(d) and idle(d), timeout=90)
    n_selected = selected_in_table(browser)
    assert n_selected > 0
    # the frame draws the same selection the table lists (an overlay group with its count)
    wait(browser, lambda d: in_frame(d, "const g = P.args.overlays.find(g => g.name.startsWith('selected'));"
                                        "return g ? g.ids.length : 0") == min(n_selected, 20_000), timeout=60)

    # a click on a point opens that example's sample panel
    in_frame(browser, "P.bar.querySelector('button').click()")  # back to pan / zoom
    i, x, y = point_on_screen(browser, 997, [20, 20, 20, 20])
    with points_frame(browser):
        canvas = browser.find_elements(By.CSS_SELECTOR, "canvas")[0]
        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(browser).move_to_element_with_offset(canvas, int(x - w / 2), int(y - h / 2)).pause(0.3).click().perform()
    wait(browser, lambda d: re.search(r"Example (\d+)", panel_text(d)) and idle(d), timeout=90)
    clicked = int(re.search(r"Example (\d+)", panel_text(browser)).group(1))
    # the example under the pointer: the one aimed at, or one drawn within a few pixels of it
    sx, sy = screen_of(browser, clicked)
    assert clicked == i or abs(sx - x) + abs(sy - y) < 8
    ARTIFACTS.mkdir(exist_ok=True)
    time.sleep(0.5)
    browser.save_screenshot(str(ARTIFACTS / "gradient-space-200k-points.png"))


def test_an_epoch_change_uploads_no_positions_and_fetches_only_colour_codes(big_server, browser):
    # the positions of every snapshot reach the frame and the GPU once per run; an epoch change
    # points the shader at another row of them and fetches at most the new colour codes
    browser.get(f"{big_server}/gradient_space?run={RUN}&epoch=20&raster=gpu")
    wait(browser, lambda d: state(d) is not None and idle(d), timeout=180)
    assert in_frame(browser, "return P.raster") == "gpu"
    media = ("return performance.getEntriesByType('resource').filter(r => r.name.includes('/media/'))"
             ".map(r => [r.name, r.encodedBodySize || r.decodedBodySize])")
    before = in_frame(browser, media)
    positions_url = in_frame(browser, "return P.posUrl")
    poisons = "return P.args.overlays.find(g => g.name.startsWith('poison')).index"
    poisons_url = in_frame(browser, poisons)
    assert in_frame(browser, "return P.uploads.positions") == 1
    assert in_frame(browser, "return P.slot") == 2
    thumb = browser.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]')
    browser.execute_script("arguments[0].focus();", thumb)
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    wait(browser, lambda d: in_frame(d, "return P.slot") == 1 and idle(d), timeout=60)
    assert in_frame(browser, "return P.uploads.positions") == 1  # nothing re-sent to the GPU
    assert in_frame(browser, "return P.posUrl") == positions_url
    # the GPU reads the second snapshot's row of the one positions buffer (n uint16 pairs per row)
    assert in_frame(browser, "return P.gl.getVertexAttribOffset(P.loc.a_to, P.gl.VERTEX_ATTRIB_ARRAY_POINTER)") == 1 * N * 4
    after = in_frame(browser, media)
    new = after[len(before):]
    assert sum(positions_url.split("/")[-1] in name for name, _ in after) == 1  # fetched once
    assert all(size <= N + 16 for _, size in new), new  # colour codes (1 byte per example + digest), small overlays
    # the poisons are the same at every epoch: the same file, fetched once
    assert in_frame(browser, poisons) == poisons_url
    assert sum(poisons_url.split("/")[-1] in name for name, _ in after) == 1

    # hover: the tooltip names the example drawn nearest the pointer (within a few pixels)
    i, x, y = point_on_screen(browser, 991, [40, 40, 200, 40])
    with points_frame(browser):
        canvas = browser.find_elements(By.CSS_SELECTOR, "canvas")[0]
        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(browser).move_to_element_with_offset(canvas, int(x - w / 2), int(y - h / 2)).pause(0.5).perform()
        tip = browser.find_element(By.CSS_SELECTOR, ".pl-tip")
        wait(browser, lambda d: tip.is_displayed(), timeout=20)
        hovered = int(re.search(r"example (\d+)", tip.text).group(1))
    sx, sy = screen_of(browser, hovered)
    assert hovered == i or (sx - x) ** 2 + (sy - y) ** 2 <= 6.5 ** 2

    # a lasso (a triangle around the middle of the map): the server lists the examples inside it,
    # and the frame draws that selection
    with points_frame(browser):
        browser.find_element(By.XPATH, "//button[text()='Lasso']").click()
        canvas = browser.find_elements(By.CSS_SELECTOR, "canvas")[0]
        w, h = canvas.size["width"], canvas.size["height"]
        chain = ActionChains(browser).move_to_element_with_offset(canvas, 0, -h // 6).click_and_hold().pause(0.3)
        for dx, dy in [(w // 6, h // 3), (-w // 3, 0), (w // 6, -h // 3)]:  # the three sides, in paced steps
            for _ in range(6):
                chain = chain.move_by_offset(dx // 6, dy // 6).pause(0.1)
        chain.release().perform()
    wait(browser, lambda d: selected_in_table(d) and idle(d), timeout=90)
    n_selected = selected_in_table(browser)
    assert 0 < n_selected < N
    wait(browser, lambda d: in_frame(d, "const g = P.args.overlays.find(g => g.name.startsWith('selected'));"
                                        "return g ? g.ids.length : 0") == min(n_selected, 20_000), timeout=60)


def canvas_picture(driver) -> np.ndarray:
    """The points canvas as the browser shows it: (height, width, 3) uint8.

    Parameters
    ----------
    driver : the Selenium driver, on the page
    """
    from io import BytesIO

    from PIL import Image

    with points_frame(driver):
        png = driver.find_elements(By.CSS_SELECTOR, "canvas")[0].screenshot_as_png
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


def test_the_cpu_and_the_webgl_raster_draw_the_same_picture(big_server, browser):
    pictures = {}
    for raster in ("cpu", "gpu"):
        browser.get(f"{big_server}/gradient_space?run={RUN}&epoch=10&raster={raster}")
        wait(browser, lambda d: state(d) is not None and idle(d), timeout=180)
        assert in_frame(browser, "return P.raster") == raster
        assert in_frame(browser, "return P.slot") == 1
        pictures[raster] = canvas_picture(browser).astype(int)
    # the frame takes the page's width as it finds it (a scrollbar may come and go): the square
    # data area is centred, so compare the centred columns both have, in blocks of 10 x 10 pixels
    # (rounding to pixels differs by one at the points' edges)
    width = min(p.shape[1] for p in pictures.values()) // 10 * 10
    height = min(p.shape[0] for p in pictures.values()) // 10 * 10
    blocks = {}
    for k, p in pictures.items():
        left = (p.shape[1] - width) // 2
        crop = p[:height, left:left + width]
        ink = np.abs(crop - 250).sum(axis=2, keepdims=True) > 30  # off the background
        blocks[k] = np.concatenate([ink, crop], axis=2).reshape(height // 10, 10, width // 10, 10, 4).mean(axis=(1, 3))
    cpu, gpu = blocks["cpu"], blocks["gpu"]
    assert gpu[..., 0].mean() > 0.05  # a map, not a blank canvas
    # the same share of each block inked, and the same colours (blending in 1/256ths against floats)
    assert np.corrcoef(cpu[..., 0].ravel(), gpu[..., 0].ravel())[0, 1] > 0.95
    assert np.abs(cpu[..., 0] - gpu[..., 0]).mean() < 0.05
    assert np.abs(cpu[..., 1:] - gpu[..., 1:]).mean() < 8
