"""The Gradient space page at scale: a 50,000-point and a 1,000,000-point run, in the real browser.

    .venv/bin/python -m bench.dashboard [--cifar ../shared/data/cifar10] [--out bench/results/dashboard.md]
        [--keep DIR] [--skip-big] [--reference DIR] [--screenshots docs/screenshots] [--moves 5]

1. Builds two run stores under a temporary folder (``--keep DIR`` keeps them):
   - 50,000 examples, 11 snapshots (epochs 0..20 every 2), 10 classes: CIFAR-10's training
     images and labels when ``--cifar`` has them (else random images), with synthetic
     gradients shaped like an EPIC run's (per-class arms that tighten over training, hard
     and poisoned examples off them, 1% poisons, medoids, isolated drops);
   - 1,000,000 examples, 3 snapshots, 8x8 grey images, the same synthetic gradients.
2. Computes each run's UMAP map in the background process the page starts
   (``python -m poisonlens.projection``), measuring its wall time and peak memory (max RSS).
3. Starts the dashboard and drives headless Chromium: time from asking for the page to the map
   drawn (first render, the browser's cache cleared first), then moves the epoch slider
   ``--moves`` times and times each redraw, counting the bytes the server sends over the
   websocket and, over HTTP, the map component's files (its page, plotly.js, the positions file).
   The map is found in the map component's iframe, or in the page (Streamlit's own chart: the
   density route, and versions of the page before the component).
4. Writes the table to ``--out`` and, with ``--screenshots``, the 50,000-point map and the
   sample panel.

``--keep DIR`` on a folder that already holds the stores and their maps reuses them (nothing is
rebuilt). ``--reference DIR`` times a copy of the tree holding an earlier version of the page
(its ``dashboard/`` and ``core/``) the same way, just before this checkout, so that both are
measured under the same load; ``--skip-big`` times the 50,000-point run only, ``--skip-small``
the large one only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from poisonlens.store import RunWriter

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1600,1500"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- synthetic run stores ------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax.

    Parameters
    ----------
    logits : float ndarray of shape (n, n_classes)

    Returns
    -------
    ndarray of shape (n, n_classes), each row summing to 1
    """
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def build_run(run_dir: Path, *, labels: np.ndarray, images: np.ndarray, epochs: list[int],
              poison_share: float = 0.01, seed: int = 0) -> Path:
    """A finished EPIC-like run store with synthetic snapshots (see the module docstring).

    Parameters
    ----------
    run_dir : the run folder to create (its name is the run's name)
    labels : int ndarray of shape (n,), each example's class in 0..9
    images : uint8 ndarray of shape (n, height, width, channels), stored as the run's images
    epochs : the snapshot epochs, evenly spaced (e.g. [0, 10, 20]); drops happen from the second on
    poison_share : share of the examples made poisons (taken from class 3), 0.01 by default
    seed : seed of the synthetic gradients, medoids and drops

    Returns
    -------
    ``run_dir``
    """
    rng = np.random.default_rng(seed)
    n, k = len(labels), 10
    is_poison = np.zeros(n, bool)
    is_poison[rng.choice(np.flatnonzero(labels == 3), size=int(poison_share * n), replace=False)] = True
    hard = rng.random(n) < 0.08  # examples the model keeps finding hard
    confusion = rng.integers(0, k, n)  # the class a hard example is confused with
    writer = RunWriter(run_dir)
    config = {"dataset": "synthetic", "epochs": epochs[-1], "snapshot_every": epochs[1] - epochs[0],
              "defense": "epic", "defense_params": {"subset_size": 0.1}, "drop_after": epochs[1],
              "stop_after": epochs[-1], "model": "synthetic"}
    writer.create(run_dir.name, config, {}, class_names=CLASSES, target=None)
    writer.write_examples(pd.DataFrame({"index": np.arange(n), "label": labels, "is_poison": is_poison,
                                        "base_index": np.where(is_poison, np.arange(n), -1)}))
    writer.write_images(images, None)
    dropped_epoch = np.full(n, -1, np.int64)
    metrics = []
    noise = rng.normal(size=(n, k)).astype(np.float32)
    for s, epoch in enumerate(epochs):
        progress = s / max(1, len(epochs) - 1)
        logits = noise * (1.5 - 0.8 * progress) + rng.normal(scale=0.3, size=(n, k)).astype(np.float32)
        logits[np.arange(n), labels] += 0.5 + 5 * progress * ~hard
        logits[np.arange(n), confusion] += 3 * progress * hard
        logits[is_poison, 7] += 2 + 3 * progress  # poisons drift toward the attacker's class
        prob = softmax(logits).astype(np.float32)
        grads = prob.copy()
        grads[np.arange(n), labels] -= 1
        active = dropped_epoch < 0
        is_medoid = active & (rng.random(n) < 0.05)
        medoids = np.flatnonzero(is_medoid)
        cluster_size = np.zeros(n, np.int64)
        cluster_size[medoids] = rng.geometric(0.08, size=len(medoids))
        isolated = is_medoid & (cluster_size == 1)
        in_window = config["drop_after"] <= epoch < config["stop_after"]
        drop = isolated & in_window
        dropped_epoch = np.where(drop, epoch, dropped_epoch)
        loss = -np.log(np.clip(prob[np.arange(n), labels], 1e-7, 1))
        frame = {"index": np.arange(n), "label": labels}
        frame.update({f"g_{c}": grads[:, c] for c in range(k)})
        frame.update(loss=loss.astype(np.float32), confidence=prob.max(1), prediction=prob.argmax(1).astype(np.int64),
                     active=active, score=np.where(is_medoid, 1.0 / np.maximum(cluster_size, 1), 0.0),
                     suspect=isolated, drop=drop, dropped_epoch=dropped_epoch.copy(),
                     medoid=medoids[rng.integers(0, len(medoids), n)] if len(medoids) else np.full(n, -1),
                     cluster_size=cluster_size, is_medoid=is_medoid, isolated=isolated)
        writer.write_snapshot(epoch, pd.DataFrame(frame))
        n_dropped = int((dropped_epoch >= 0).sum())
        metrics.append({"epoch": epoch, "test_acc": 0.5 + 0.4 * progress, "n_new_drops": int(drop.sum()),
                        "n_dropped": n_dropped, "n_active": n - n_dropped,
                        "n_poison_dropped": int(((dropped_epoch >= 0) & is_poison).sum()),
                        "attack_success": np.nan, "target_prob_adv": np.nan, "train_loss": float(loss.mean()),
                        "epoch_seconds": 0.0, "eval_seconds": 0.0, "snapshot_seconds": 0.0, "defense_seconds": 0.0})
    writer.write_metrics(pd.DataFrame(metrics))
    writer.set_status("finished")
    return run_dir


def cifar_or_random(root: str | None, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels of shape (n,), uint8 images of shape (n, 32, 32, 3), where they came from).

    Parameters
    ----------
    root : an ImageFolder CIFAR-10 (its ``train/`` is read) or None; random images when it has none
    n : how many examples
    seed : seed of the random labels and images
    """
    if root and (Path(root) / "train").is_dir():
        from poisonlens.data import load_dataset

        data = load_dataset(f"imagefolder:{root}")
        return data.y_train[:n].astype(np.int64), np.ascontiguousarray(data.x_train[:n]), f"CIFAR-10 images ({root})"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n), rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "random 32x32 images"


# --- the map, in its background process ----------------------------------------------------


def compute_map(run_dir: Path, method: str = "umap") -> dict:
    """Run ``python -m poisonlens.projection`` as the page does; wall time and the child's peak RSS.

    Parameters
    ----------
    run_dir : the run store to map
    method : 'umap' (default) or 'pca'
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu0 = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poisonlens.projection", str(run_dir), "--method", method], check=True,
                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu0
    job = json.loads((run_dir / "projections" / f"{method}.job.json").read_text())
    return {"seconds": wall, "cpu_seconds": cpu, "max_rss_mb": max(peak, before) / 1024, "n_fit": job.get("n_fit"),
            "n_placed": job.get("n_placed"), "note": "" if peak > before else " (peak of an earlier child)"}


# --- the browser ---------------------------------------------------------------------------

# the map: the plotly graph inside the map component's (same-origin) iframe, or Streamlit's own
# chart in the page (the density route, and earlier versions of the page)
SIGNATURE = """
let gd = null;
for (const f of document.querySelectorAll('iframe')) {
  // the points renderer (WebGL2) says what it drew last: snapshot | colour codes | message
  try { const s = f.contentDocument && f.contentDocument.body && f.contentDocument.body.dataset.mapState; if (s) return s; } catch (e) {}
}
for (const f of document.querySelectorAll('iframe')) {
  try { gd = f.contentDocument && f.contentDocument.querySelector('.js-plotly-plot'); } catch (e) {}
  if (gd) break;
}
gd = gd || document.querySelector('.js-plotly-plot');
if (!gd || !gd.data || !gd.data.length) return null;
const parts = gd.data.map(t => t.name + ':' + (t.x && t.x.length) + ':' + (t.x && t.x.length ? String(t.x[0]) : ''));
const imgs = (gd.layout.images || []).map(i => (i.source || '').slice(-60));
return parts.join('|') + imgs.join('|');
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def package_view(tree: Path) -> Path:
    """A folder whose ``poisonlens`` package is ``tree``'s (for ``PYTHONPATH``).

    The package is ``core/`` as ``poisonlens`` and ``dashboard/`` as ``poisonlens.dashboard``
    (pyproject.toml's ``package-dir``), so putting ``tree`` itself on ``PYTHONPATH`` imports
    nothing of it: the installed (editable) package of this checkout would be timed twice. The
    folder holds a ``poisonlens/`` of links to ``tree/core``'s entries and ``tree/dashboard``;
    ``PYTHONPATH`` comes before the editable install's finder.

    Parameters
    ----------
    tree : a checkout or copy of the project (its ``core/`` and ``dashboard/``)
    """
    view = Path(tempfile.mkdtemp(prefix="bench-tree-"))
    package = view / "poisonlens"
    package.mkdir()
    for entry in (tree / "core").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry.resolve())
    (package / "dashboard").symlink_to((tree / "dashboard").resolve())
    return view


def start_server(runs: Path, tree: Path = REPO, timing_log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the dashboard of ``tree`` on a free port; returns (the process, its URL) once it answers.

    Parameters
    ----------
    runs : the folder of run stores the dashboard lists (``POISONLENS_RUNS``)
    tree : this checkout (default), or a copy holding an earlier version of the page, whose
        ``core/`` and ``dashboard/`` are then imported as ``poisonlens`` (:func:`package_view`)
    timing_log : when given, the server runs under :mod:`bench.server_timing`, which writes a
        JSON line per timed call of the page (and per script run) to this file
    """
    port = free_port()
    path = str(REPO) if tree.resolve() == REPO else f"{package_view(tree)}{os.pathsep}{REPO}"  # REPO: bench
    env = {**os.environ, "POISONLENS_RUNS": str(runs), "POISONLENS_SAMPLES": "", "PYTHONPATH": path}
    if timing_log is not None:
        launcher = ["-m", "bench.server_timing", str(timing_log)]
    else:
        launcher = ["-m", "streamlit"]
    proc = subprocess.Popen(
        [sys.executable, *launcher, "run", str(tree / "dashboard" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("streamlit did not start") from None
            time.sleep(0.3)


def browser():
    """Headless Chromium (:data:`FLAGS`, a fresh profile) with Chromium's performance log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def ws_bytes(driver) -> int:
    """Bytes received over websockets since the last call (Chromium's performance log).

    Parameters
    ----------
    driver : a driver made by :func:`browser`
    """
    return received(driver)["websocket"]


def received(driver) -> dict[str, int]:
    """Bytes received since the last call (Chromium's performance log): over websockets, and
    over HTTP from the map component's folder (its page, plotly.js, the positions file).

    Parameters
    ----------
    driver : a driver made by :func:`browser` (its performance log is read, and so emptied)
    """
    totals = {"websocket": 0, "component": 0, "positions": 0}
    urls = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.webSocketFrameReceived":
            payload = params["response"]
            data = payload.get("payloadData", "")
            totals["websocket"] += len(data) * 3 // 4 if payload.get("opcode") == 2 else len(data)
        elif method == "Network.responseReceived":
            urls[params["requestId"]] = params["response"]["url"]
        elif method == "Network.loadingFinished" and any(
                part in urls.get(params["requestId"], "") for part in ("/component/", "/media/")):
            # the component's files, and what it fetches from Streamlit's media files (positions,
            # colour codes, plotly.js)
            size = int(params.get("encodedDataLength", 0))
            totals["component"] += size
            if urls[params["requestId"]].endswith((".f32", ".bin")):
                totals["positions"] += size
    return totals


def wait(driver, condition, timeout: float = 120):
    """Poll ``condition(driver)`` every 20 ms until it is truthy; returns its value.

    Parameters
    ----------
    driver : a Selenium driver
    condition : a function of the driver
    timeout : seconds before Selenium's TimeoutException
    """
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition)


def idle(driver) -> bool:
    """Whether Streamlit's "running" status widget is gone (the rerun finished).

    Parameters
    ----------
    driver : a Selenium driver on a Streamlit page
    """
    from selenium.webdriver.common.by import By

    return not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')


def time_page(driver, url: str, run: str, moves: int, shots: Path | None, shot_name: str, last_epoch: int) -> dict:
    """Time the Gradient space page: first render (browser cache cleared), then ``moves`` slider moves.

    Parameters
    ----------
    driver : a driver made by :func:`browser`
    url : the server's root URL
    run : the run's name
    moves : slider moves, each one snapshot leftwards from ``last_epoch`` (at most the snapshots
        before it)
    shots : a folder for a screenshot after the moves, or None
    shot_name : the screenshot's file name without ``.png``
    last_epoch : the snapshot the page opens on

    Returns
    -------
    dict with first_render_s, server_answer_s, first_bytes, redraw_s (a time per move) and
    redraw_bytes (bytes received per move)
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    health = time.perf_counter()
    urllib.request.urlopen(f"{url}/_stcore/health", timeout=10)
    answered = time.perf_counter() - health
    received(driver)
    # a first-time visitor: nothing in the browser's cache (Streamlit's scripts, plotly.js, positions)
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    start = time.perf_counter()
    # from the last snapshot, so each slider move asks for an epoch not sent yet (Streamlit sends a
    # message the browser already has as a short reference, which would flatter the figures)
    driver.get(f"{url}/gradient_space?run={run}&epoch={last_epoch}")
    wait(driver, lambda d: d.execute_script(SIGNATURE) is not None, timeout=300)
    first = time.perf_counter() - start
    wait(driver, idle, timeout=300)
    first_bytes = received(driver)
    redraws, sizes = [], []
    for _ in range(moves):
        before = driver.execute_script(SIGNATURE)
        thumb = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] input[type="range"]')
        driver.execute_script("arguments[0].focus();", thumb)
        t0 = time.perf_counter()
        ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
        wait(driver, lambda d, before=before: d.execute_script(SIGNATURE) not in (None, before), timeout=120)
        redraws.append(time.perf_counter() - t0)
        wait(driver, idle, timeout=120)
        got = received(driver)
        sizes.append(got["websocket"] + got["component"])
    if shots is not None:
        time.sleep(1.0)
        driver.save_screenshot(str(shots / f"{shot_name}.png"))
    return {"first_render_s": first, "server_answer_s": answered, "first_bytes": first_bytes,
            "redraw_s": redraws, "redraw_bytes": sizes}


# in the points renderer's frame: a box around the median example holding about `want` examples,
# as screen offsets from the canvas's centre (found by bisection on its half-width)
BOX_FOR = """
const a = P.args, off = P.slot * P.n * 2, want = arguments[0];
const xs = [], ys = [];
for (let i = 0; i < P.n; i += 50) { xs.push(P.xy[off + 2 * i]); ys.push(P.xy[off + 2 * i + 1]); }
const med = v => v.filter(isFinite).sort((p, q) => p - q)[v.length >> 1];
const cx = med(xs), cy = med(ys);
const count = h => { let c = 0; for (let i = 0; i < P.n; i++) {
  const x = P.xy[off + 2 * i], y = P.xy[off + 2 * i + 1];
  if (Math.abs(x - cx) <= h * (a.x_range[1] - a.x_range[0]) && Math.abs(y - cy) <= h * (a.y_range[1] - a.y_range[0])) c++; }
  return c; };
let lo = 0, hi = 0.5;
for (let k = 0; k < 30; k++) { const m = (lo + hi) / 2; if (count(m) < want) lo = m; else hi = m; }
const h = hi, dx = h * (a.x_range[1] - a.x_range[0]), dy = h * (a.y_range[1] - a.y_range[0]);
const p0 = screenOf(toGl(cx - dx, a.x_range), toGl(cy + dy, a.y_range));
const p1 = screenOf(toGl(cx + dx, a.x_range), toGl(cy - dy, a.y_range));
return [p0[0] - P.width / 2, p0[1] - P.height / 2, p1[0] - p0[0], p1[1] - p0[1], count(h)];
"""


def points_frame(driver) -> bool:
    """Switch into the points renderer's iframe (False, in the page, when there is none).

    Parameters
    ----------
    driver : a Selenium driver on the Gradient space page
    """
    from selenium.webdriver.common.by import By

    for frame in driver.find_elements(By.TAG_NAME, "iframe"):
        driver.switch_to.frame(frame)
        if driver.find_elements(By.CSS_SELECTOR, ".pl-bar"):
            return True
        driver.switch_to.default_content()
    return False


def time_box(driver, want: int = 10_000) -> dict:
    """Draw a box over about ``want`` examples in the points renderer; time from the mouse's
    release to the selection table listing them (and the map drawing them).

    Parameters
    ----------
    driver : a Selenium driver on the Gradient space page with the points renderer
    want : how many examples the box should hold (found by bisection on its size)
    """
    import re

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    if not points_frame(driver):
        return {"error": "no points renderer"}
    try:
        driver.find_element(By.XPATH, "//button[text()='Box']").click()
        x0, y0, dx, dy, inside = driver.execute_script(BOX_FOR, want)
        canvas = driver.find_element(By.CSS_SELECTOR, "canvas")
        chain = ActionChains(driver).move_to_element_with_offset(canvas, int(x0), int(y0)).click_and_hold().pause(0.3)
        done_x = done_y = 0
        for k in range(1, 11):  # ten paced steps whose whole pixels add up to the box (it may be small)
            step_x, step_y = round(dx * k / 10) - done_x, round(dy * k / 10) - done_y
            chain = chain.move_by_offset(step_x, step_y).pause(0.15)
            done_x, done_y = done_x + step_x, done_y + step_y
        chain.perform()
        t0 = time.perf_counter()
        ActionChains(driver).release().perform()
    finally:
        driver.switch_to.default_content()

    def listed(d):
        found = re.search(r"([\d,]+) selected", d.find_element(By.TAG_NAME, "body").text)
        return int(found.group(1).replace(",", "")) if found else None

    n = wait(driver, listed, timeout=120)
    table = time.perf_counter() - t0
    wait(driver, idle, timeout=120)
    return {"box_to_table_s": table, "box_to_idle_s": time.perf_counter() - t0, "selected": n, "inside_box": inside}


def sample_panel_shot(driver, shots: Path) -> None:
    """Look an example up by index (as a user would) and photograph its sample panel.

    Parameters
    ----------
    driver : a Selenium driver on the Gradient space page
    shots : the folder of ``gradient-space-sample-panel.png``
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Find an example by index"]')
    box.send_keys("1234" + Keys.ENTER)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[class*="st-key-gs_sample_panel"]') and idle(d))
    time.sleep(1.0)
    panel = driver.find_element(By.CSS_SELECTOR, '[class*="st-key-gs_sample_panel"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", panel)
    time.sleep(0.5)
    driver.save_screenshot(str(shots / "gradient-space-sample-panel.png"))


# --- report --------------------------------------------------------------------------------


def row(name: str, timing: dict) -> str:
    """A Markdown table row of one run's timings.

    Parameters
    ----------
    name : the row's title
    timing : what :func:`time_page` returned (or {'error': text})
    """
    if "error" in timing:
        return f"| {name} | not measured: {timing['error']} | | | |"
    r, first = timing["redraw_s"], timing["first_bytes"]
    files = (f" + {first['component'] / 1e6:.2f} MB of component files (positions {first['positions'] / 1e6:.2f} MB)"
             if first["component"] else "")
    return (f"| {name} | {timing['first_render_s']:.2f} s | {statistics.median(r):.2f} s "
            f"({min(r):.2f}–{max(r):.2f}) | {statistics.median(timing['redraw_bytes']) / 1e6:.2f} MB | "
            f"{first['websocket'] / 1e6:.2f} MB over the websocket{files} |")


def main() -> None:
    """Build the stores, map them, time both pages and write the report (the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dashboard.md"))
    parser.add_argument("--keep", default=None, help="build the run stores here and keep them")
    parser.add_argument("--screenshots", default=None, help="save the 50,000-point map and sample panel here")
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--big", type=int, default=1_000_000, help="examples in the large run")
    parser.add_argument("--skip-big", action="store_true", help="time the 50,000-point run only")
    parser.add_argument("--skip-small", action="store_true", help="time the large run only")
    parser.add_argument("--no-box", action="store_true", help="do not time a box selection on the large run")
    parser.add_argument("--after-first", action="store_true", help="with --reference: time this checkout first")
    parser.add_argument("--reference", default=None,
                        help="a copy of the tree (its dashboard/ and core/) holding an earlier page: timed the same "
                             "way just before this checkout, side by side")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-dashboard-"))
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    lines = []
    maps = {}
    t0 = time.perf_counter()
    if not (runs / "cifar-50k" / "projections" / "umap.parquet").is_file():
        labels, images, source = cifar_or_random(args.cifar, 50_000)
        build_run(runs / "cifar-50k", labels=labels, images=images, epochs=list(range(0, 21, 2)))
        print(f"50,000-point store built in {time.perf_counter() - t0:.0f} s ({source})", flush=True)
        maps["cifar-50k"] = compute_map(runs / "cifar-50k")
        print("map 50k:", maps["cifar-50k"], flush=True)
        (root / "map-cifar-50k.json").write_text(json.dumps(maps["cifar-50k"]))
    big = f"synthetic-{args.big // 1000}k"
    if not args.skip_big and not (runs / big / "projections" / "umap.parquet").is_file():
        rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        build_run(runs / big, labels=rng.integers(0, 10, args.big),
                  images=rng.integers(0, 256, (args.big, 8, 8, 1), dtype=np.uint8), epochs=[0, 10, 20], seed=1)
        print(f"{args.big:,}-point store built in {time.perf_counter() - t0:.0f} s", flush=True)
        maps[big] = compute_map(runs / big)
        print(f"map {big}:", maps[big], flush=True)
        (root / f"map-{big}.json").write_text(json.dumps(maps[big]))
    for name in ("cifar-50k", big):  # measured by an earlier run of this script on the kept stores
        if name not in maps and (root / f"map-{name}.json").is_file():
            maps[name] = json.loads((root / f"map-{name}.json").read_text())
    trees = [("before", Path(args.reference))] if args.reference else []
    trees.append(("after" if args.reference else "", REPO))
    if args.after_first:  # the other order: files the first server read sit in the OS cache for the second
        trees.reverse()
    names = (([] if args.skip_small else [("cifar-50k", "gradient-space-50k", 20)])
             + ([] if args.skip_big else [(big, "gradient-space-1m", 20)]))
    timings: dict[tuple[str, str], dict] = {}
    loads: dict[str, list[float]] = {}
    for label, tree in trees:  # one version after the other, each warmed the same way
        proc, url = start_server(runs, tree)
        driver = browser()
        try:
            driver.set_script_timeout(300)
            for name, shot, epochs in names:
                moves = min(args.moves, 10 if name == "cifar-50k" else 2)
                keep = shots if tree == REPO else None
                try:
                    time_page(driver, url, name, 0, None, "", epochs)  # warm the server's caches, as a first visit would
                    timings[label, name] = time_page(driver, url, name, moves, keep, shot, epochs)
                    if name != "cifar-50k" and not args.no_box:  # the points renderer: a box of ~10,000 examples
                        timings[label, name]["box"] = time_box(driver)
                except Exception as err:  # noqa: BLE001 - one run's failure is reported, the other still measured
                    traceback.print_exc()
                    if points_frame(driver):  # what the map's frame last did
                        print("frame:", driver.execute_script(
                            "return document.body.innerText.slice(0, 300) + ' | ' + performance.getEntriesByType('mark')"
                            ".map(m => m.name + '@' + Math.round(m.startTime)).join(' ')"), flush=True)
                        driver.switch_to.default_content()
                    timings[label, name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
                print(label, name, json.dumps(timings[label, name]), flush=True)
                if name == "cifar-50k" and keep and "error" not in timings[label, name]:
                    sample_panel_shot(driver, keep)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(10)
        loads[label] = list(os.getloadavg())
    load = os.getloadavg()
    which = {"before": f"before ({args.reference})", "after": "after (this checkout)", "": ""}
    lines += ["# Gradient space at scale", "",
              f"`python -m bench.dashboard {' '.join(sys.argv[1:])}` on the development machine: 2 CPU cores shared "
              f"with other jobs (load average {load[0]:.1f} at the end of this run"
              + "".join(f"; {lab} measured at a 1-minute load of {ld[0]:.1f}" for lab, ld in loads.items() if lab)
              + f"), one thread per process, headless Chromium ({' '.join(FLAGS[:-1])}; software WebGL). Each page "
              "is visited once before it is timed (the server's caches warm, as after a user's first visit); the browser's "
              "cache is cleared before each timed visit (a first-time visitor downloads everything).", "",
              "| run | first render (page asked → map drawn) | epoch slider → map redrawn, median (range) | "
              "sent per redraw | sent for the first render |", "|---|---|---|---|---|"]
    for name, _, _ in names:
        title = ("50,000 examples × 11 snapshots (points, WebGL)" if name == "cifar-50k"
                 else f"{args.big:,} examples × 3 snapshots (every example a point: WebGL2, or the CPU where WebGL is software)")
        for label, _ in trees:
            lines.append(row(f"{title}{', ' + which[label] if label else ''}", timings[label, name]))
    for (label, name), t in timings.items():
        box = t.get("box") if isinstance(t, dict) else None
        if box and "error" not in box:
            lines.append("")
            lines.append(f"Box selection on {name}{' (' + label + ')' if label else ''}: a box over {box['inside_box']:,} "
                         f"examples → the selection table lists {box['selected']:,} in {box['box_to_table_s']:.2f} s "
                         f"(the page idle after {box['box_to_idle_s']:.2f} s), from the mouse's release.")
    lines.append("")
    if maps:
        lines += ["The UMAP map, computed once per run by the background process (`python -m poisonlens.projection`):", "",
                  "| run | wall time | CPU time (what an unloaded core would take) | peak memory (max RSS) | "
                  "rows fitted | rows placed by nearest neighbours |", "|---|---|---|---|---|---|"]
        for name, m in maps.items():
            lines.append(f"| {name} | {m['seconds']:.0f} s | {m.get('cpu_seconds', float('nan')):.0f} s | "
                         f"{m['max_rss_mb']:.0f} MB{m['note']} | {m['n_fit']:,} | {m['n_placed']:,} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
