"""The Gradient space page's plotly figures: the map of one snapshot and a class's cluster sizes.

Every map trace carries the example index as ``customdata`` (see :mod:`poisonlens.dashboard.selection`)
and uses WebGL (``Scattergl``) with numpy arrays, which plotly sends as binary typed arrays, so
that 50,000 points stay interactive; past that, the examples are drawn as a density image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go

from poisonlens.dashboard.figures.map_style import (
    COLOR_FIELDS,
    PLOT_FONT,
    STYLE,
    MapMarks,
    MapView,
    color_groups,
    color_values,
    flag,
    hex_rgb,
    overlay_labels,
    overlay_masks,
    value_range,
    viridis,
)

DENSITY_PIXELS = 640  # width and height of the density image drawn for very large runs


@dataclass(frozen=True)
class MapFrame:
    """The area a map shows.

    Attributes
    ----------
    x_range, y_range : fixed axis ranges (the same for every epoch of a run)
    method : the layout's name, for the axis titles ('UMAP', 'PCA')
    height : the figure's height in pixels
    """

    x_range: list[float]
    y_range: list[float]
    method: str = "UMAP"
    height: int = 620


def _xy(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return points["x"].to_numpy(np.float32), points["y"].to_numpy(np.float32)


def _scatter(points: pd.DataFrame, *, name: str, marker: dict, legendgroup: str | None = None,
             visible: bool | str = True, hover: str = "") -> go.Scattergl:
    """One WebGL trace. Positions go as float32 and the example index as int32 ``customdata``:
    plotly sends numpy arrays to the browser as base64 typed arrays, with no per-point strings."""
    marker = dict(marker)
    opacity = marker.pop("opacity", 1.0)
    line = {k[5:]: marker.pop(k) for k in list(marker) if k.startswith("line_")}
    if line:
        marker["line"] = line
    x, y = _xy(points)
    return go.Scattergl(
        x=x, y=y, mode="markers", name=name, marker=marker, opacity=opacity,
        customdata=points["index"].to_numpy(np.int32),
        hovertemplate="<b>example %{customdata}</b>" + hover + "<extra>%{fullData.name}</extra>",
        legendgroup=legendgroup or name, visible=visible, showlegend=True,
    )


def density_image(x: np.ndarray, y: np.ndarray, rgb: np.ndarray, *, x_range: list[float],
                  y_range: list[float], pixels: int = DENSITY_PIXELS) -> np.ndarray:
    """Points rasterised to an RGBA image: each pixel the mean colour of its points, more
    opaque where more points fall (log scale).

    Parameters
    ----------
    x, y : float ndarrays of shape (n_points,)
        The points' positions.
    rgb : uint8 ndarray of shape (n_points, 3)
        Each point's colour.
    x_range, y_range : list of two floats
        The area drawn; points outside it are left out.
    pixels : int
        The image's width and height.

    Returns
    -------
    uint8 ndarray of shape (pixels, pixels, 4), row 0 at the top (largest y)
    """
    fx = (np.asarray(x, np.float64) - x_range[0]) / (x_range[1] - x_range[0])
    fy = (np.asarray(y, np.float64) - y_range[0]) / (y_range[1] - y_range[0])
    ok = (fx >= 0) & (fx < 1) & (fy >= 0) & (fy < 1)
    col = (fx[ok] * pixels).astype(np.int64)
    row = pixels - 1 - (fy[ok] * pixels).astype(np.int64)
    cell = row * pixels + col
    count = np.bincount(cell, minlength=pixels * pixels).astype(np.float64)
    out = np.zeros((pixels * pixels, 4), np.uint8)
    filled = count > 0
    for ch in range(3):
        total = np.bincount(cell, weights=rgb[ok, ch].astype(np.float64), minlength=pixels * pixels)
        out[filled, ch] = np.round(total[filled] / count[filled]).astype(np.uint8)
    if filled.any():
        level = np.log1p(count[filled]) / np.log1p(count.max())
        out[filled, 3] = np.round(255 * (0.35 + 0.65 * level)).astype(np.uint8)
    return out.reshape(pixels, pixels, 4)


def _png_uri(rgba: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _limit(rows: pd.DataFrame, most: int, notes: list[str], what: str) -> pd.DataFrame:
    if len(rows) <= most:
        return rows
    notes.append(f"{what}: {most:,} of {len(rows):,} drawn (a random sample)")
    return rows.sample(n=most, random_state=0).sort_index()


def _colorbar_trace(field: str, lo: float, hi: float) -> go.Scattergl:
    return go.Scattergl(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                        marker=dict(color=[lo], cmin=lo, cmax=hi, colorscale="Viridis",
                                    colorbar=dict(title=dict(text=COLOR_FIELDS[field][0], side="right"), thickness=12)))


def _cluster_trace(kept: pd.DataFrame) -> go.Scattergl:
    """The examples coloured by their EPIC cluster (one class's view)."""
    medoids = kept["medoid"].to_numpy()
    order = {m: i for i, m in enumerate(pd.unique(medoids[medoids >= 0]))}
    palette = pc.qualitative.Dark24
    colors = [palette[order[m] % len(palette)] if m in order else "#bbbbbb" for m in medoids]
    return _scatter(kept, name="examples (colour = cluster)", marker=dict(size=7, color=colors, opacity=0.85))


def _density_layer(points: pd.DataFrame, class_names: list[str], frame: MapFrame,
                   color_by: str) -> tuple[dict, list[go.Scattergl], str]:
    """Every example in one image, coloured as the points would be (dropped ones grey): (the
    layout image, legend traces for its colours, the note that says so)."""
    if COLOR_FIELDS.get(color_by, ("", "category"))[1] == "category":
        codes, groups = color_groups(points, color_by, class_names)
        table = np.array([hex_rgb(c) for _, c in groups], np.uint8)
        rgb = table[np.clip(codes, 0, len(table) - 1)]
        legend = [go.Scattergl(x=[None], y=[None], mode="markers", name=name, marker=dict(size=8, color=color),
                               hoverinfo="skip") for name, color in groups]
    else:
        values = color_values(points, color_by)
        lo, hi = value_range(values)
        lut = np.array([hex_rgb(c) for c in viridis(256)], np.uint8)
        scaled = np.nan_to_num((values - lo) / (hi - lo or 1.0), nan=0.0)
        rgb = lut[np.clip((scaled * 255).astype(np.int64), 0, 255)]
        legend = [_colorbar_trace(color_by, lo, hi)]
    dropped_before = flag(points, "dropped_before")
    if dropped_before is not None:
        rgb[dropped_before] = hex_rgb(STYLE["dropped earlier"]["color"])
    x, y = _xy(points)
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    image = density_image(x, y, rgb, x_range=frame.x_range, y_range=frame.y_range)
    layer = dict(source=_png_uri(image), xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0, sizey=y1 - y0,
                 sizing="stretch", layer="below")
    note = (f"all {len(points):,} examples are drawn as a density image ({DENSITY_PIXELS}×{DENSITY_PIXELS} "
            "pixels; more opaque where more examples fall); poisons, drops and your selection as points")
    return layer, legend, note


def _example_traces(kept: pd.DataFrame, color_by: str, class_names: list[str]) -> list[go.Scattergl]:
    """The examples still in training, a trace per category or one trace on a colour scale."""
    if COLOR_FIELDS.get(color_by, ("", "category"))[1] == "category":
        codes, groups = color_groups(kept, color_by, class_names)
        return [_scatter(kept[codes == code], name=name, marker=dict(size=5, color=color, opacity=0.75))
                for code, (name, color) in enumerate(groups) if (codes == code).any()]
    values = color_values(kept, color_by)
    lo, hi = value_range(values)
    title = COLOR_FIELDS[color_by][0]
    return [_scatter(kept, name=f"examples (colour = {title})",
                     marker=dict(size=5, color=values, colorscale="Viridis", cmin=lo, cmax=hi, opacity=0.8,
                                 colorbar=dict(title=dict(text=title, side="right"), thickness=12)),
                     hover="<br>" + title + " %{marker.color:.3g}")]


def _overlay_traces(points: pd.DataFrame, view: MapView, marks: MapMarks, notes: list[str]) -> list[go.Scattergl]:
    """The overlay groups (drops, medoids, poisons, the selection) drawn over the examples."""
    labels = overlay_labels(view.kept_label)
    traces = []
    for key, mask in overlay_masks(points, marks).items():
        if mask is None or (key == "dropped earlier" and view.density):
            continue
        rows = points[mask]
        if len(rows) == 0 and key != "dropped now":  # "dropped now (0)" says that nothing was
            continue
        n_rows = len(rows)
        if view.density or key == "medoid":
            rows = _limit(rows, view.max_overlay, notes, labels[key])
        marker = dict(STYLE[key])
        if key == "medoid" and view.by_cluster and "cluster_size" in rows:
            marker = dict(symbol="star", size=(6 + 3 * np.sqrt(rows["cluster_size"].clip(lower=1))).to_numpy(np.float32),
                          color="#222222", line_color="#ffffff", line_width=0.5)
        visible = view.show_medoids if key == "medoid" and not view.by_cluster else True
        traces.append(_scatter(rows, name=f"{labels[key]} ({n_rows:,})", marker=marker, legendgroup=key,
                               visible=visible))
    return traces


def _target_trace(target: pd.DataFrame) -> go.Scattergl:
    return go.Scattergl(
        x=target["x"].to_numpy(np.float32), y=target["y"].to_numpy(np.float32), mode="markers",
        name=overlay_labels(None)["target"],
        marker=dict(symbol="star", size=24, color="#ffd700", line=dict(color="#111111", width=1.5)),
        customdata=np.array([-1], np.int32),
        hovertemplate="<b>target</b> (test image)<br>gradient for the attacker's class<extra></extra>",
    )


def _map_layout(fig: go.Figure, frame: MapFrame, by_cluster: bool, images: list[dict], notes: list[str]) -> None:
    fig.update_layout(
        height=frame.height, margin=dict(l=10, r=10, t=30, b=10), font=PLOT_FONT,
        # no legend title (the page says how to use the legend): plotly.js 4 indents a horizontal
        # legend by its title's width and lets the last entries overflow the frame; y=-0.08 puts
        # it below the axis title (a paper fraction: about 30 px at this height)
        legend=dict(font=dict(size=12), itemsizing="constant", orientation="h", yanchor="top", y=-0.08,
                    xanchor="left", x=0),
        # click = open; box / lasso from the modebar
        uirevision=f"map-{by_cluster}-{frame.x_range}-{frame.y_range}", plot_bgcolor="#fafafa", dragmode="pan",
        images=images, meta=dict(notes=notes),
    )
    axis_title = dict(size=12, color="#808495")  # quiet, as Streamlit's theme draws axis titles
    axis = dict(title_font=axis_title, title_standoff=4, showticklabels=False, zeroline=False, showgrid=False)
    fig.update_xaxes(range=frame.x_range, title_text=f"{frame.method} 1", **axis)
    fig.update_yaxes(range=frame.y_range, title_text=f"{frame.method} 2", **axis)


def gradient_map_figure(points: pd.DataFrame, *, class_names: list[str], frame: MapFrame,
                        view: MapView | None = None, marks: MapMarks | None = None) -> go.Figure:
    """The gradient map of one snapshot.

    Parameters
    ----------
    points : DataFrame
        A row per example: index, x, y, label, prediction, loss, is_poison, dropped_before
        (dropped at an earlier snapshot), drop (dropped at this one), and, for EPIC,
        cluster_size, is_medoid, isolated, medoid; the column of ``view.color_by`` when it is a
        value field (e.g. drift).
    class_names : list of str
        The name of each class.
    frame : MapFrame
        The axis ranges, the layout's name and the height.
    view : MapView or None
        What colours the examples, which overlays show, density or points (None: ``MapView()``).
    marks : MapMarks or None
        The selection, the looked-up example and the target (None: nothing marked).

    Returns
    -------
    go.Figure; ``fig.layout.meta["notes"]`` lists what was subsampled (empty when nothing)
    """
    view, marks = view or MapView(), marks or MapMarks()
    fig = go.Figure()
    notes: list[str] = []
    images = []
    dropped_before = flag(points, "dropped_before")
    kept = points if dropped_before is None else points[~dropped_before]
    if view.by_cluster and "medoid" in points:
        fig.add_trace(_cluster_trace(kept))
    elif view.density:
        layer, legend, note = _density_layer(points, class_names, frame, view.color_by)
        images.append(layer)
        notes.append(note)
        fig.add_traces(legend)
    else:
        fig.add_traces(_example_traces(kept, view.color_by, class_names))
    fig.add_traces(_overlay_traces(points, view, marks, notes))
    if marks.target is not None and len(marks.target):
        fig.add_trace(_target_trace(marks.target))
    _map_layout(fig, frame, view.by_cluster, images, notes)
    return fig


def cluster_sizes_figure(clusters: pd.DataFrame, *, height: int = 260) -> go.Figure:
    """Bars of one class's cluster sizes at one snapshot, largest first, isolated ones in red.

    Parameters
    ----------
    clusters : DataFrame
        A row per medoid with ``medoid`` (its example index), ``cluster_size`` and ``isolated``.
    height : int
        The figure's height in pixels.
    """
    clusters = clusters.sort_values("cluster_size", ascending=False).reset_index(drop=True)
    colors = np.where(clusters["isolated"].astype(bool), "#d62728", "#7f7f7f")
    fig = go.Figure(go.Bar(x=np.arange(1, len(clusters) + 1), y=clusters["cluster_size"], marker_color=colors,
                           customdata=clusters[["medoid"]].to_numpy(),
                           hovertemplate="medoid example %{customdata[0]}<br>cluster size %{y}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), font=PLOT_FONT,
                      title=dict(text="Cluster sizes of this class (red: isolated, size 1)", font=dict(size=14)))
    fig.update_xaxes(title_text="medoids, largest cluster first")
    fig.update_yaxes(title_text="examples in cluster")
    return fig
