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
  point by the frame's own WebGL2 program (``frontend/points.js``), coloured by a uint8 code per
  example, with the overlay groups (poisons, drops, selection, the looked-up example, the
  target) drawn on a 2-D canvas above it and an HTML legend.

Both get every snapshot's positions once per run as one binary file of shape (n_snapshots,
n_samples, 2): float32 for ``figure``, uint16 codes over the map's extent for ``points`` (half
the bytes: 12 MB at 1,000,000 × 3), which the ``points`` renderer uploads to the GPU once; an epoch
change sends the snapshot's row number, and the frame fetches only the colour codes (1 byte per
example) and overlay groups (int32 example indices) that changed. Binary files are handed to Streamlit's
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
from collections import OrderedDict
from dataclasses import dataclass
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


_FRAMED: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # id(data) -> (data, framed data)


def framed(data: bytes) -> bytes:
    """``data`` with a 16-byte BLAKE2b digest of it in front.

    Streamlit's media file manager names a file over 1 MiB by a fingerprint of its length, head,
    middle and tail only; two epochs' colour codes can share all four. With the digest in front
    the head differs whenever the data do, so a new file always gets a new URL. The last few
    results are kept by the identity of ``data`` (the page hands the same cached positions
    object on every rerun: 24 MB at 1,000,000 × 3 is hashed once, not per rerun).

    Parameters
    ----------
    data : the file's bytes (never modified: ``bytes`` is immutable)
    """
    kept = _FRAMED.get(id(data))
    if kept is not None and kept[0] is data:
        _FRAMED.move_to_end(id(data))
        return kept[1]
    out = hashlib.blake2b(data, digest_size=HEADER).digest() + data
    if len(data) > 1 << 20:  # only large files are worth keeping
        _FRAMED[id(data)] = (data, out)
        while len(_FRAMED) > 4:
            _FRAMED.popitem(last=False)
    return out


def media_url(data: bytes, *, mimetype: str, name: str) -> str:
    """Hand ``data`` to Streamlit's media file manager (memory, per session); returns its URL.

    Called on every rerun that shows the map: the manager forgets a session's files at each
    full rerun unless they are added again. The same bytes give the same URL, so the browser
    fetches a file once per run.

    Parameters
    ----------
    data : the file's bytes
    mimetype : its content type, e.g. 'application/octet-stream'
    name : a name unique on the page (the manager keeps one file per name and session)
    """
    from streamlit.runtime import Runtime

    return Runtime.instance().media_file_mgr.add(data, mimetype, f"gradient_map.{name}")


def binary_url(data: bytes, *, name: str) -> str:
    """:func:`media_url` of :func:`framed` ``data`` (the frame reads from byte 16 on).

    Parameters
    ----------
    data : the file's bytes (positions, colour codes)
    name : a name unique on the page, as for :func:`media_url`
    """
    return media_url(framed(data), mimetype="application/octet-stream", name=name)


def positions_bytes(xy: np.ndarray) -> bytes:
    """Every snapshot's positions as little-endian float32 bytes.

    Parameters
    ----------
    xy : float32 ndarray of shape (n_snapshots, n_samples, 2), NaN where an example is not placed
    """
    return np.ascontiguousarray(xy, dtype="<f4").tobytes()


QUANT_MISSING = 65535  # the uint16 position code of an example without a position
_QUANTIZED: OrderedDict[int, tuple[np.ndarray, bytes, tuple[float, float, float, float]]] = OrderedDict()


def quantized_positions(xy: np.ndarray) -> tuple[bytes, tuple[float, float, float, float]]:
    """Every snapshot's positions as little-endian uint16 codes over their extent: half the bytes of float32.

    A code ``q`` stands for ``x0 + q * dx`` (and ``y0 + q * dy``); :data:`QUANT_MISSING` for
    no position. A step is 1/65,534 of the map's extent: a pixel of the whole map is about 40
    steps, so the points move by well under a pixel even zoomed in 30 times. The last few results
    are kept by the identity of ``xy`` (the page hands the same cached array on every rerun).

    Parameters
    ----------
    xy : float32 ndarray of shape (n_snapshots, n_samples, 2), NaN where an example is not placed

    Returns
    -------
    (the codes' bytes, of shape (n_snapshots, n_samples, 2); (x0, dx, y0, dy))
    """
    kept = _QUANTIZED.get(id(xy))
    if kept is not None and kept[0] is xy:
        return kept[1], kept[2]
    finite = np.isfinite(xy).all(axis=-1)
    scale = []
    codes = np.empty(xy.shape, "<u2")
    for axis in (0, 1):
        values = np.where(finite, xy[..., axis], np.nan).astype(np.float64)  # whole arrays: no masked copies
        low, high = (float(np.nanmin(values)), float(np.nanmax(values))) if finite.any() else (0.0, 1.0)
        step = (high - low) / (QUANT_MISSING - 1) or 1.0
        codes[..., axis] = np.where(finite, np.rint(np.nan_to_num((values - low) / step)), QUANT_MISSING)
        scale += [low, step]
    out = (codes.tobytes(), (scale[0], scale[1], scale[2], scale[3]))
    _QUANTIZED[id(xy)] = (xy, *out)
    while len(_QUANTIZED) > 4:
        _QUANTIZED.popitem(last=False)
    return out


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
    ``customdata``); returns the numbers of the traces the browser fills in from the file.

    Parameters
    ----------
    fig : the gradient map's figure, changed in place (traces of more than :data:`FILL_ABOVE`
        points lose their ``x`` and ``y``)
    """
    filled = []
    for number, trace in enumerate(fig.data):
        custom = trace.customdata
        if custom is not None and len(custom) > FILL_ABOVE and trace.x is not None:
            trace.x, trace.y = None, None
            filled.append(number)
    return filled


@dataclass(frozen=True)
class Positions:
    """Where the browser finds every snapshot's positions, and which snapshot to draw.

    Parameters
    ----------
    url : URL (:func:`binary_url`) of the positions, shape (n_snapshots, n_samples, 2), fetched
        once per URL by the frame: float32 (:func:`positions_bytes`), or uint16 codes
        (:func:`quantized_positions`, the points renderer only) when ``scale`` is given
    slot : the drawn snapshot's row in that file (0 to n_snapshots - 1)
    n_samples : examples per snapshot
    scale : (x0, dx, y0, dy) of uint16 codes (x = x0 + code * dx), or None for float32
    """

    url: str
    slot: int
    n_samples: int
    scale: tuple[float, float, float, float] | None = None

    def args(self) -> dict:
        """The component arguments that carry these positions."""
        return {"positions": self.url, "slot": int(self.slot), "n_samples": int(self.n_samples),
                "scale": None if self.scale is None else [float(v) for v in self.scale]}


@dataclass(frozen=True)
class PointsView:
    """What the ``points`` renderer draws for one snapshot, besides the positions.

    Parameters
    ----------
    colors : URL (:func:`binary_url`) of a uint8 colour code per example, shape (n_samples,): an
        index into ``palette``; the code ``len(palette) - 1`` is reserved for examples not shown
        (drawn transparent, never hovered)
    palette : '#rrggbb' or '#rrggbbaa' per code (at most 256)
    names : what a hovered point's tooltip says of its code, per code
    legend : [{'name', 'color'}] entries of the HTML legend, and a colour bar when given as
        {'name', 'colorbar': [colours], 'low', 'high'}
    overlays : [{'name', 'symbol', 'color', 'size', 'index': list of example indices}] drawn above
        the points in order (symbols: circle, circle-open, square-open, diamond, x, star)
    x_range, y_range : [low, high] of the data area mapped to the view (fixed for a run, so epochs line up)
    target : [x, y] of the target's star, or None
    """

    colors: str
    palette: list[str]
    names: list[str]
    legend: list[dict]
    overlays: list[dict]
    x_range: list[float]
    y_range: list[float]
    target: list[float] | None = None

    def args(self) -> dict:
        """The component arguments of this view (JSON-ready)."""
        return {"colors": self.colors, "palette": list(self.palette), "names": list(self.names),
                "legend": list(self.legend), "overlays": list(self.overlays),
                "x_range": [float(v) for v in self.x_range], "y_range": [float(v) for v in self.y_range],
                "target": None if self.target is None else [float(v) for v in self.target]}


def gradient_map(fig: go.Figure, *, key: str, config: dict, positions: Positions | None = None,
                 height: int | None = None):
    """Draw ``fig`` in the mounted map component (the ``figure`` renderer); returns its selection event (or None).

    Parameters
    ----------
    fig : the gradient map (:func:`poisonlens.dashboard.figures.gradient_map.gradient_map_figure`)
    key : the widget key (its value, the latest selection event, is kept under it)
    config : plotly config (modebar, pixel ratio)
    positions : every snapshot's positions and the row of this figure's snapshot; when given, the
        large traces' ``x``/``y`` are removed here and filled in by the browser from that row
    height : the frame's height in pixels (default: the figure's, else 620)
    """
    filled = strip_positions(fig) if positions else []
    height = int(height or fig.layout.height or 620)
    where = positions.args() if positions else {"positions": None, "slot": 0, "n_samples": 0}
    return _component(renderer="figure", figure=fig.to_json(), config=config, fill=filled, height=height,
                      plotly=plotly_url(), key=key, default=None, **where)


def gradient_points(view: PointsView, *, key: str, positions: Positions, height: int = 620,
                    raster: str = "auto"):
    """Draw every example as a point (the ``points`` renderer); returns its selection event (or None).

    Per epoch only ``positions.slot``, the URLs of the colour codes and of each overlay group's
    indices (int32 files: a new file only when they changed) and ``view``'s small lists reach the
    browser; the positions file is fetched once per run.

    Parameters
    ----------
    view : the colour codes, palette, legend, overlays and data area of this snapshot
    key : the widget key (its value, the latest selection event, is kept under it)
    positions : every snapshot's positions and the drawn snapshot's row
    height : the frame's height in pixels (the map, its toolbar and legend)
    raster : ``"gpu"`` (the frame's WebGL2 program), ``"cpu"`` (its JavaScript rasterizer into a
        2-D canvas) or ``"auto"``: the CPU where the browser's WebGL is software-emulated or
        missing, where it is also the faster of the two
    """
    args = view.args()
    # each overlay group's indices as a binary file: the same group (the poisons) on the next epoch
    # has the same URL, which the frame does not fetch again
    args["overlays"] = [{**group, "index": binary_url(np.asarray(group["index"], "<i4").tobytes(), name=f"overlay{k}")}
                        for k, group in enumerate(args["overlays"])]
    return _component(renderer="points", height=int(height), key=key, default=None, raster=raster,
                      **positions.args(), **args)
