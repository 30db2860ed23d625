"""The gradient map as a custom Streamlit component that stays mounted between epochs.

Streamlit 1.67 puts a plotly figure into its chart element's id, so every new figure is a new
element: the chart is mounted again and builds a new WebGL context (in software in a headless
or GPU-less browser), about 2-3 s per epoch at 50,000 points. This component keeps its drawing
alive in its iframe and updates it per epoch. It has two renderers:

- ``figure`` (up to :data:`POINTS_ABOVE` examples): the plotly figure
  :func:`poisonlens.dashboard.figures.gradient_map.gradient_map_figure` builds, updated with ``Plotly.react``.
  A figure's large traces are sent without ``x``/``y``: the browser fills them in from the
  positions file by the example indices the traces carry as ``customdata``.
- ``points`` (any size; the page uses it past :data:`POINTS_ABOVE`): every example drawn as a
  point by regl-scatterplot (WebGL, bundled in ``frontend/regl-scatterplot.min.js``), coloured
  by a uint8 code per example, with the overlay groups (poisons, drops, selection, the looked-up
  example, the target) drawn on a 2-D canvas above it and an HTML legend.

Both get every snapshot's positions once per run as one binary file (float32 of shape
(n_snapshots, n_samples, 2)); a ``points`` epoch change fetches only its colour codes (1 byte
per example, and nothing when they did not change). Binary files are handed to Streamlit's
media file manager (in memory, as ``st.image`` does) and reach the browser by URL, fetched once
and kept by the frame; nothing is written to disk, and nothing at import: the component is
served from this package's ``frontend/`` folder as installed (plotly.js, which the ``figure``
renderer needs, is handed over the same way from the installed plotly package).

The component's value is the selection event in the shape Streamlit's plotly chart reports
(``{"selection": {"points": [...], "box": [...], "lasso": [...]}}``), so
:mod:`poisonlens.dashboard.selection` reads both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import streamlit.components.v1 as components

HERE = Path(__file__).resolve().parent
FRONTEND = HERE / "frontend"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
FILL_ABOVE = 64  # traces with more points than this get their positions from the file
POINTS_ABOVE = 200_000  # examples; past this the page draws every example with the points renderer

_component = components.declare_component("gradient_map", path=str(FRONTEND))


HEADER = 16  # bytes of digest before a binary file's data (the frame skips them)


def framed(data: bytes) -> bytes:
    """``data`` with a 16-byte BLAKE2b digest of it in front.

    Streamlit's media file manager names a file over 1 MiB by a fingerprint of its length, head,
    middle and tail only; two epochs' colour codes can share all four. With the digest in front
    the head differs whenever the data do, so a new file always gets a new URL.
    """
    return hashlib.blake2b(data, digest_size=HEADER).digest() + data


def media_url(data: bytes, *, mimetype: str, name: str) -> str:
    """Hand ``data`` to Streamlit's media file manager (memory, per session); returns its URL.

    Called on every rerun that shows the map: the manager forgets a session's files at each
    full rerun unless they are added again. The same bytes give the same URL, so the browser
    fetches a file once per run.

    Parameters
    ----------
    data : the file's bytes
    mimetype : its content type
    name : a name unique on the page (the manager keeps one file per name and session)
    """
    from streamlit.runtime import Runtime

    return Runtime.instance().media_file_mgr.add(data, mimetype, f"gradient_map.{name}")


def binary_url(data: bytes, *, name: str) -> str:
    """:func:`media_url` of :func:`framed` ``data`` (the frame reads from byte 16 on)."""
    return media_url(framed(data), mimetype="application/octet-stream", name=name)


def positions_bytes(xy: np.ndarray) -> bytes:
    """Every snapshot's positions as little-endian float32 bytes.

    Parameters
    ----------
    xy : float32 ndarray of shape (n_snapshots, n_samples, 2), NaN where an example is not placed
    """
    return np.ascontiguousarray(xy, dtype="<f4").tobytes()


def plotly_url() -> str:
    """plotly.js of the installed plotly package, as a media URL (read, never copied)."""
    return media_url(_plotly_bytes(), mimetype="text/javascript", name="plotly")


_PLOTLY: list[bytes] = []


def _plotly_bytes() -> bytes:
    if not _PLOTLY:
        _PLOTLY.append(PLOTLY_JS.read_bytes())
    return _PLOTLY[0]


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
    """Draw ``fig`` in the mounted map component (the ``figure`` renderer); returns its selection event (or None).

    Parameters
    ----------
    fig : the gradient map (:func:`poisonlens.dashboard.figures.gradient_map.gradient_map_figure`)
    key : the widget key (its value, the latest selection event, is kept under it)
    config : plotly config (modebar, pixel ratio)
    positions : the URL of every snapshot's positions (:func:`binary_url` of :func:`positions_bytes`);
        when given, the large traces' ``x``/``y`` are removed here and filled in by the browser
        from row ``slot`` of that file
    slot : the snapshot's row in the positions file
    n_samples : examples per snapshot in the positions file
    height : the frame's height in pixels (default: the figure's)
    """
    filled = strip_positions(fig) if positions else []
    height = int(height or fig.layout.height or 620)
    return _component(renderer="figure", figure=fig.to_json(), config=config, positions=positions, slot=int(slot),
                      n_samples=int(n_samples), fill=filled, height=height, plotly=plotly_url(), key=key,
                      default=None)


def gradient_points(*, key: str, positions: str, slot: int, n_samples: int, colors: str, palette: list[str],
                    names: list[str], legend: list[dict], overlays: list[dict], x_range: list[float],
                    y_range: list[float], target: list[float] | None = None, height: int = 620):
    """Draw every example as a point (the ``points`` renderer); returns its selection event (or None).

    Parameters
    ----------
    key : the widget key (its value, the latest selection event, is kept under it)
    positions : URL (:func:`binary_url`) of every snapshot's positions (float32 of shape (n_snapshots, n_samples, 2))
    slot : the snapshot's row in the positions file
    n_samples : examples per snapshot
    colors : URL (:func:`binary_url`) of a uint8 colour code per example (n_samples,) for this snapshot: an index into
        ``palette``; the code ``len(palette) - 1`` is reserved for examples not shown (drawn
        transparent, never hovered)
    palette : '#rrggbb' or '#rrggbbaa' per code
    names : what a hovered point's tooltip says of its code, per code
    legend : [{'name', 'color'}] entries of the HTML legend, and a colour bar when given as
        {'name', 'colorbar': [colours], 'low', 'high'}
    overlays : [{'name', 'symbol', 'color', 'size', 'index': list of example indices}] drawn above
        the points in order (symbols: circle, circle-open, square-open, diamond, x, star)
    x_range, y_range : the data area mapped to the view (fixed for a run, so epochs line up)
    target : [x, y] of the target's star, or None
    height : the frame's height in pixels (the map, its toolbar and legend)
    """
    return _component(renderer="points", positions=positions, slot=int(slot), n_samples=int(n_samples),
                      colors=colors, palette=palette, names=names, legend=legend, overlays=overlays,
                      x_range=[float(v) for v in x_range], y_range=[float(v) for v in y_range],
                      target=target, height=int(height), key=key, default=None)
