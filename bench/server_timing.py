"""The dashboard's server with timers around the Gradient space page's steps (``bench.points_big --timed``).

    python -m bench.server_timing LOG streamlit-run-arguments...

Runs ``streamlit run`` in this process after wrapping the functions the page calls (the stored
map and snapshots, the colour codes and overlays, the media files, the selection, the table's
thumbnails) and each script run (a whole rerun, or a fragment's) with a timer; every call is one
JSON line in ``LOG``: ``{"t": wall-clock start, "name", "s": seconds}``. The page's script looks
those functions up in their modules on every rerun, so the wrapped ones are what it calls.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
import time

TIMED = {
    "poisonlens.dashboard.common": ("load_snapshot", "load_examples", "thumbnails", "projection_extent"),
    "poisonlens.dashboard.figures.points": ("point_layers",),
    "poisonlens.dashboard.figures.gradient_map": ("gradient_map_figure",),
    "poisonlens.dashboard.components.gradient_map": ("binary_url", "gradient_points", "gradient_map"),
    "poisonlens.dashboard.selection": ("indices_in_shapes",),
    "poisonlens.dashboard.display": ("expression_ui", "readable"),
    "poisonlens.dashboard.marking": ("mark_ui",),
    "poisonlens.review": ("verdicts",),
    "streamlit": ("dataframe",),
}
_lock = threading.Lock()


def wrap(log, name: str, fn):
    """``fn`` with a timer that writes a line to ``log`` per call.

    Parameters
    ----------
    log : a text file open for appending
    name : the name written for each call
    fn : the function timed
    """

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start, t0 = time.time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                log.write(json.dumps({"t": round(start, 3), "name": name, "s": round(time.perf_counter() - t0, 4)}) + "\n")
                log.flush()

    return timed


def wrap_page_functions(log) -> None:
    """Wrap the functions of :data:`TIMED` in their modules (once; in the first script run, when
    Streamlit's runtime exists: the map component registers itself with it at import).

    Parameters
    ----------
    log : a text file open for appending
    """
    # the page's module imported these names once: its own references are wrapped too
    page = importlib.import_module("poisonlens.dashboard.views.gradient_space")
    for module_name, names in TIMED.items():
        module = importlib.import_module(module_name)
        for name in names:
            timed = wrap(log, f"{module_name.rsplit('.', 1)[-1]}.{name}", getattr(module, name))
            setattr(module, name, timed)
            if getattr(page, name, None) is not None and module_name != "streamlit":
                setattr(page, name, timed)


def main() -> None:
    """Time every script run and, from the first on, the functions of :data:`TIMED`; then run ``streamlit``."""
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the server's life
    from streamlit.runtime.scriptrunner import script_runner

    runner = script_runner.ScriptRunner
    run_script = wrap(log, "rerun", runner._run_script)
    wrapped = []

    def first_wraps(self, *args, **kwargs):
        if not wrapped:
            wrapped.append(True)
            wrap_page_functions(log)
        return run_script(self, *args, **kwargs)

    runner._run_script = first_wraps
    from streamlit.web.cli import main as streamlit_main

    sys.argv = ["streamlit", *sys.argv[2:]]
    streamlit_main()


if __name__ == "__main__":
    main()
