"""The gradient map as a custom Streamlit component that stays mounted between epochs.

Streamlit 1.67 puts a plotly figure into its chart element's id, so every new figure is a new
element: the chart is mounted again and builds a new WebGL context (in software in a headless
or GPU-less browser), about 2-3 s per epoch at 50,000 points. This component keeps one plotly
graph alive in its iframe and updates it with ``Plotly.react``.

Every snapshot's positions are written once per run to a binary file the component serves
(float32 of shape (n_snapshots, n_samples, 2)); the browser fetches it once and caches it.
A figure's large traces are then sent without ``x``/``y``: the browser fills them in from the
file by the example indices the traces carry as ``customdata``. The figure itself is the one
:func:`poisonlens.dashboard.plots.gradient_map_figure` builds, so what is drawn does not depend on the
route.

The component's value is the selection event in the shape Streamlit's plotly chart reports
(``{"selection": {"points": [...], "box": [...], "lasso": [...]}}``), so
:mod:`poisonlens.dashboard.selection` reads both.

Plotly.js comes from the installed plotly package; it is copied with the frontend into a served
folder created at import (``build/`` next to this file, git-ignored; a temporary folder when the
package folder is read-only), never committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import streamlit.components.v1 as components

HERE = Path(__file__).resolve().parent
FRONTEND = HERE / "frontend"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
DATA = "data"  # sub-folder of the served folder holding the positions files
KEEP_FILES = 16  # positions files kept (the oldest are removed; each run's is rewritten on demand)
FILL_ABOVE = 64  # traces with more points than this get their positions from the file


def _copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` unless an identical file is there (atomically: servers started
    side by side copy into the same folder)."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _served_folder() -> Path:
    """The folder the component is served from, filled with the frontend and plotly.js."""
    for folder in (HERE / "build", Path(tempfile.gettempdir()) / f"poisonlens-gradient-map-{os.getuid()}"):
        try:
            (folder / DATA).mkdir(parents=True, exist_ok=True)
            for src in sorted(FRONTEND.iterdir()):
                _copy(src, folder / src.name)
            _copy(PLOTLY_JS, folder / "plotly.min.js")
            return folder
        except OSError:
            continue  # a read-only install: the temporary folder instead
    raise OSError(f"no writable folder to serve the gradient map from ({HERE / 'build'})")


SERVED = _served_folder()
_component = components.declare_component("gradient_map", path=str(SERVED))


def write_positions(xy: np.ndarray, *, key: str) -> str:
    """Store every snapshot's positions where the component serves them; returns the file name.

    Parameters
    ----------
    xy : float32 ndarray of shape (n_snapshots, n_samples, 2), NaN where an example is not placed
    key : what identifies these positions (run path, map method, map file time); the same key
        gives the same file, written once

    Returns
    -------
    str, the file's path relative to the served folder (``data/<hash>.f32``)
    """
    name = f"{DATA}/{hashlib.sha256(key.encode()).hexdigest()[:24]}-{xy.shape[0]}x{xy.shape[1]}.f32"
    dest = SERVED / name
    if not dest.is_file():
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        np.ascontiguousarray(xy, dtype="<f4").tofile(tmp)
        os.replace(tmp, dest)
        old = sorted((SERVED / DATA).glob("*.f32"), key=lambda p: p.stat().st_mtime)[:-KEEP_FILES]
        for path in old:
            path.unlink(missing_ok=True)
    elif time.time() - dest.stat().st_mtime > 600:
        os.utime(dest)  # recently used: kept by the pruning above (touched at most every 10 minutes)
    return name


def strip_positions(fig: go.Figure) -> list[int]:
    """Remove ``x``/``y`` from the figure's large traces (they carry example indices as
    ``customdata``); returns the numbers of the traces the browser fills in from the file."""
    filled = []
    for number, trace in enumerate(fig.data):
        custom = trace.customdata
        if custom is not None and len(custom) > FILL_ABOVE and trace.x is not None:
            trace.x, trace.y = None, None
            filled.append(number)
    return filled


def gradient_map(fig: go.Figure, *, key: str, config: dict, positions: str | None = None, slot: int = 0,
                 n_samples: int = 0, height: int | None = None):
    """Draw ``fig`` in the mounted map component; returns its selection event (or None).

    Parameters
    ----------
    fig : the gradient map (:func:`poisonlens.dashboard.plots.gradient_map_figure`)
    key : the widget key (its value, the latest selection event, is kept under it)
    config : plotly config (modebar, pixel ratio)
    positions : a file from :func:`write_positions`; when given, the large traces' ``x``/``y``
        are removed here and filled in by the browser from row ``slot`` of that file
    slot : the snapshot's row in the positions file
    n_samples : examples per snapshot in the positions file
    height : the frame's height in pixels (default: the figure's)
    """
    filled = strip_positions(fig) if positions else []
    height = int(height or fig.layout.height or 620)
    return _component(figure=fig.to_json(), config=config, positions=positions, slot=int(slot),
                      n_samples=int(n_samples), fill=filled, height=height, key=key, default=None)
