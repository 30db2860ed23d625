"""Time the points renderer on the 1,000,000-point store: first render, N slider moves, a box of ~10,000.

    PYTHONPATH=. .venv/bin/python -m bench.points_big RUNS_DIR [MOVES]   (RUNS_DIR holding synthetic-1000k)
"""
import json
import sys
import traceback
from pathlib import Path

from bench.dashboard import browser, start_server, time_box, time_page

proc, url = start_server(Path(sys.argv[1]))
d = browser()
d.set_script_timeout(300)
try:
    print("warm", json.dumps(time_page(d, url, "synthetic-1000k", 0, None, "", 20)), flush=True)
    try:
        print("timed", json.dumps(time_page(d, url, "synthetic-1000k", int(sys.argv[2]) if len(sys.argv) > 2 else 2, None, "", 20)), flush=True)
    except Exception:
        traceback.print_exc()
    from bench.dashboard import points_frame
    if points_frame(d):
        print(d.execute_script("return performance.getEntriesByType('mark').map(m => m.name + '@' + Math.round(m.startTime)).join(' ')"))
        d.switch_to.default_content()
    try:
        print("box", json.dumps(time_box(d)), flush=True)
    except Exception:
        traceback.print_exc()
    if points_frame(d):
        print(d.execute_script("return JSON.stringify([P.down, P.up, P.mode, sent, performance.getEntriesByType('mark').slice(-4).map(m => m.name)])"))
        d.switch_to.default_content()

finally:
    d.quit()
    proc.terminate()
