"""Time the points renderer on a large store: first render, slider moves, a box of ~10,000, and where the time goes.

    .venv/bin/python -m bench.points_big RUNS_DIR [--run synthetic-1000k] [--moves 2] [--last-epoch 20]
        [--timed LOG] [--visits 1]

``RUNS_DIR`` holds the run (``bench.dashboard.build_run`` with its map; ``python -m bench.dashboard
--keep DIR`` makes ``DIR/runs/synthetic-1000k``). The page is visited once to warm the server's
caches (unless ``--no-warm``), then ``--visits`` timed visits (the browser's cache cleared before each) move the slider
``--moves`` times from ``--last-epoch`` leftwards and draw a box over about 10,000 examples
(:func:`bench.dashboard.time_box`). Printed: each visit's JSON, the map frame's
``performance.mark``s (render message received, data fetched, drawn), and with ``--timed`` the
server's own timings (:mod:`bench.server_timing`: each script run and the page's steps), summed
per step over each interaction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

from bench.dashboard import browser, points_frame, start_server, time_box, time_page

MARKS = "return performance.getEntriesByType('mark').map(m => m.name + '@' + Math.round(m.startTime)).join(' ')"


def frame_marks(driver) -> str:
    """The map frame's ``performance.mark``s as 'name@ms' (empty when there is no points frame).

    Parameters
    ----------
    driver : the Selenium driver, on the page (left there)
    """
    if not points_frame(driver):
        return ""
    try:
        return driver.execute_script(MARKS)
    finally:
        driver.switch_to.default_content()


def server_steps(log: Path, since: float, until: float) -> dict[str, tuple[int, float]]:
    """{step: (calls, seconds summed)} of the server's timing log for calls started in [since, until).

    Parameters
    ----------
    log : the JSON-lines file :mod:`bench.server_timing` writes
    since, until : wall-clock seconds (``time.time()``)
    """
    steps: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if since <= entry["t"] < until:
            steps[entry["name"]].append(entry["s"])
    return {name: (len(s), round(sum(s), 3)) for name, s in sorted(steps.items(), key=lambda kv: -sum(kv[1]))}


# P is a top-level const of the frame's script, not a property of its window: asked through eval
FRAME_MS = ("for (const f of document.querySelectorAll('iframe')) { const r = f.contentWindow.eval("
            "\"typeof P === 'undefined' ? null : [P.raster, Math.round(P.frameMs), Math.round(P.overlayMs || 0)]\");"
            " if (r) return r; } return null")


def main() -> None:
    """Run the timings the module docstring describes and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--run", default="synthetic-1000k")
    parser.add_argument("--moves", type=int, default=2)
    parser.add_argument("--last-epoch", type=int, default=20)
    parser.add_argument("--visits", type=int, default=1)
    parser.add_argument("--timed", type=Path, default=None, help="write the server's timings here and sum them")
    parser.add_argument("--no-warm", action="store_true",
                        help="no warm-up visit: the first timed visit finds the server's caches empty")
    args = parser.parse_args()
    if args.timed:
        args.timed.write_text("")
    print(f"load before: {os.getloadavg()[0]:.1f}", flush=True)
    proc, url = start_server(args.runs, timing_log=args.timed)
    driver = browser()
    driver.set_script_timeout(300)
    results = []
    try:
        if not args.no_warm:
            print("warm", json.dumps(time_page(driver, url, args.run, 0, None, "", args.last_epoch)), flush=True)
        for _ in range(args.visits):
            t0 = time.time()
            timing = time_page(driver, url, args.run, args.moves, None, "", args.last_epoch)
            t1 = time.time()
            print("timed", json.dumps(timing), flush=True)
            print("marks", frame_marks(driver), flush=True)
            print("raster, last points frame ms, last overlays ms", driver.execute_script(FRAME_MS), flush=True)
            box = time_box(driver)
            t2 = time.time()
            print("box", json.dumps(box), flush=True)
            print("marks", frame_marks(driver), flush=True)
            results.append((timing, box))
            if args.timed:
                print("server, first render and slider moves:", server_steps(args.timed, t0, t1), flush=True)
                print("server, box:", server_steps(args.timed, t1, t2), flush=True)
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)
    firsts = [t["first_render_s"] for t, _ in results]
    moves = [r for t, _ in results for r in t["redraw_s"]]
    boxes = [b["box_to_table_s"] for _, b in results if "box_to_table_s" in b]
    print(f"summary: first render {statistics.median(firsts):.2f} s median ({len(firsts)}), slider "
          f"{statistics.median(moves):.2f} s median ({min(moves):.2f}-{max(moves):.2f}, {len(moves)} moves), box -> table "
          + (f"{statistics.median(boxes):.2f} s median ({len(boxes)})" if boxes else "not measured")
          + f"; load after {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
