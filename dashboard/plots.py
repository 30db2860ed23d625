"""Figure builders: each takes DataFrames and returns a plotly figure, testable without a server.

Every map trace carries the example index as ``customdata`` (see :mod:`poisonlens.dashboard.selection`)
and uses WebGL (``Scattergl``) with numpy arrays, which plotly sends as binary typed arrays, so
that 50,000 points stay interactive; past that, the examples are drawn as a density image.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from poisonlens.defense import colour_columns

# distinct groups drawn over the class colours, in drawing order
STYLE = {
    "dropped earlier": dict(symbol="x", size=5, color="#9e9e9e", opacity=0.55),
    "medoid": dict(symbol="circle-open", size=8, color="#222222", line_width=1, opacity=0.8),
    "dropped now": dict(symbol="circle-open", size=15, color="#d62728", line_width=2.5),
    # magenta: not one of the class colours (CLASS10), nor red (dropped now)
    "isolated, kept": dict(symbol="circle-open", size=15, color="#ff00ff", line_width=2.5),
    "poison": dict(symbol="diamond", size=10, color="#111111", line_color="#ffffff", line_width=1),
    "selected": dict(symbol="square-open", size=13, color="#111111", line_width=2),
    "found": dict(symbol="circle-open", size=34, color="#00b3ff", line_width=4),
    "target": dict(symbol="star", size=24, color="#ffd700", line_color="#111111", line_width=1.5),
}
LABELS = {
    "dropped earlier": "dropped at an earlier snapshot",
    "medoid": "medoid (stands for a cluster)",
    "dropped now": "isolated medoid: dropped now",
    "isolated, kept": "isolated, kept (outside the drop window)",
    "poison": "poison (ground truth)",
    "selected": "selected by you",
    "found": "the example you looked up",
    "target": "target (its gradient for the attacker's class)",
}
PLOT_FONT = dict(size=13)
DENSITY_PIXELS = 640  # width and height of the density image drawn for very large runs
MAX_OVERLAY = 20_000  # most points drawn in one overlay group (poisons, drops, selection) at once

# ten class colours without red (isolated rings) or grey (dropped examples)
CLASS10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939"]

#: colour the map by: field -> (what the legend says, 'category' or 'value')
COLOR_FIELDS = {
    "class": ("class (label)", "category"),
    "prediction": ("predicted class", "category"),
    "correct": ("correct or not", "category"),
    "poison": ("poison or clean", "category"),
    "review": ("your review (poison / clean / unsure)", "category"),
    "dropped_epoch": ("epoch dropped", "category"),
    "loss": ("loss (log10)", "value"),
    "drift": ("drift (log10)", "value"),
    # the columns the defenses declare (the score; EPIC's cluster size), from their registry
    **{c: (f"{v.title}{' (log10)' if v.log else ''}", "value") for c, v in colour_columns().items()},
}
LOG_FIELDS = ("loss", "drift", *(c for c, v in colour_columns().items() if v.log))


def class_colors(n_classes: int) -> list[str]:
    """One colour per class, from a palette large enough for ``n_classes``."""
    palette = CLASS10 if n_classes <= 10 else pc.qualitative.Light24 if n_classes <= 24 else pc.qualitative.Alphabet
    return [palette[c % len(palette)] for c in range(n_classes)]


def color_groups(points: pd.DataFrame, field: str, class_names: list[str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Categories of ``field`` for colouring: (a code per row, [(name, colour)] per code).

    Parameters
    ----------
    points : a row per example with the columns the field needs (label, prediction, is_poison,
        dropped_epoch)
    field : a 'category' key of COLOR_FIELDS
    """
    n = len(points)
    if field in ("class", "prediction"):
        column = "label" if field == "class" else "prediction"
        codes = points[column].to_numpy(np.int64) if column in points else np.zeros(n, np.int64)
        colors = class_colors(len(class_names))
        return codes, [(f"{'class' if field == 'class' else 'predicted'} {_text(name)}", colors[c])
                       for c, name in enumerate(class_names)]
    if field == "correct":
        codes = (points["prediction"].to_numpy() != points["label"].to_numpy()).astype(np.int64)
        return codes, [("predicted correctly", "#4c9f70"), ("predicted wrongly", "#d95f02")]
    if field == "poison":
        codes = points["is_poison"].to_numpy(bool).astype(np.int64)
        return codes, [("clean", "#8fa9c4"), ("poison", "#111111")]
    if field == "review":
        verdicts = points["review"].to_numpy(object) if "review" in points else np.full(n, "", object)
        codes = np.select([verdicts == "poison", verdicts == "clean", verdicts == "unsure"], [1, 2, 3], 0)
        return codes.astype(np.int64), [("not reviewed", "#c7c7c7"), ("marked poison", "#d62728"),
                                        ("marked clean", "#2ca02c"), ("marked unsure", "#ff7f0e")]
    if field == "dropped_epoch":
        dropped = points["dropped_epoch"].to_numpy(np.int64)
        epochs = sorted(int(e) for e in np.unique(dropped[dropped >= 0]))
        lookup = {e: i + 1 for i, e in enumerate(epochs)}
        # vectorised (a million rows): 0 = never dropped, else the rank of its epoch + 1
        codes = np.where(dropped >= 0, np.searchsorted(np.asarray(epochs, np.int64), dropped) + 1, 0).astype(np.int64)
        del lookup
        ramp = pc.sample_colorscale("Plasma", [0.1 + 0.8 * i / max(1, len(epochs) - 1) for i in range(len(epochs))])
        return codes, [("never dropped", "#c7c7c7")] + [(f"dropped at epoch {e}", c) for e, c in zip(epochs, ramp, strict=True)]
    raise ValueError(f"{field!r} is not a category field; choose from {list(COLOR_FIELDS)}")


def color_values(points: pd.DataFrame, field: str) -> np.ndarray:
    """float32 values of a 'value' field for colouring (log10 for losses, drift, cluster sizes)."""
    values = points[field].to_numpy(np.float64) if field in points else np.full(len(points), np.nan)
    if field in LOG_FIELDS:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(np.where(values > 0, values, np.nan))
    return values.astype(np.float32)


def _xy(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return points["x"].to_numpy(np.float32), points["y"].to_numpy(np.float32)


def _scatter(points: pd.DataFrame, *, name: str, marker: dict, legendgroup: str | None = None,
             visible: bool | str = True, showlegend: bool = True, hover: str = "") -> go.Scattergl:
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
        legendgroup=legendgroup or name, visible=visible, showlegend=showlegend,
    )


def _hex_rgb(color: str) -> tuple[int, int, int]:
    if color.startswith("rgb"):
        return tuple(int(float(v)) for v in color[color.index("(") + 1 : -1].split(",")[:3])
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))


def density_image(x: np.ndarray, y: np.ndarray, rgb: np.ndarray, *, x_range: list[float],
                  y_range: list[float], pixels: int = DENSITY_PIXELS) -> np.ndarray:
    """Points rasterised to an RGBA image: each pixel the mean colour of its points, more
    opaque where more points fall (log scale).

    Parameters
    ----------
    x, y : float ndarrays of shape (n_points,)
    rgb : uint8 ndarray of shape (n_points, 3), each point's colour
    x_range, y_range : the area drawn

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


def gradient_map_figure(points: pd.DataFrame, *, class_names: list[str], x_range: list[float],
                        y_range: list[float], target: pd.DataFrame | None = None,
                        selected: list[int] | tuple[int, ...] = (), found: int | None = None,
                        color_by: str = "class", method: str = "UMAP", by_cluster: bool = False,
                        show_medoids: bool | str = "legendonly", kept_label: str | None = None,
                        density: bool = False, max_overlay: int = MAX_OVERLAY,
                        height: int = 620) -> go.Figure:
    """The gradient map of one snapshot.

    Parameters
    ----------
    points : DataFrame, a row per example: index, x, y, label, prediction, loss, is_poison,
        dropped_before (dropped at an earlier snapshot), drop (dropped at this one), and, for
        EPIC, cluster_size, is_medoid, isolated, medoid; the column of ``color_by`` when it is
        a value field (e.g. drift)
    class_names : the name of each class
    x_range, y_range : fixed axis ranges (the same for every epoch of a run)
    target : one row with x, y (the target's gradient for ``adv_label``), or None
    selected : example indices to mark
    found : an example index to ring (a looked-up example), or None
    color_by : a key of COLOR_FIELDS
    by_cluster : colour by EPIC cluster (one class's view) instead of by ``color_by``
    show_medoids : True, False or 'legendonly'
    kept_label : legend text of isolated medoids not dropped (why they were kept)
    density : draw the examples as a density image (for very large runs) instead of a point each;
        poisons, drops and the selection are still points
    max_overlay : most points drawn per overlay group; more are sampled, and said so

    Returns
    -------
    go.Figure; ``fig.layout.meta["notes"]`` lists what was subsampled (empty when nothing)
    """
    fig = go.Figure()
    notes: list[str] = []
    dropped_before = points["dropped_before"].to_numpy(bool) if "dropped_before" in points else np.zeros(len(points), bool)
    kept = points[~dropped_before]
    kind = COLOR_FIELDS.get(color_by, ("", "category"))[1]
    images = []
    if by_cluster and "medoid" in points:
        medoids = kept["medoid"].to_numpy()
        order = {m: i for i, m in enumerate(pd.unique(medoids[medoids >= 0]))}
        palette = pc.qualitative.Dark24
        colors = [palette[order[m] % len(palette)] if m in order else "#bbbbbb" for m in medoids]
        fig.add_trace(_scatter(kept, name="examples (colour = cluster)", marker=dict(size=7, color=colors, opacity=0.85)))
    elif density:
        # one image for every example, coloured as the points would be (dropped ones grey)
        if kind == "category":
            codes, groups = color_groups(points, color_by, class_names)
            table = np.array([_hex_rgb(c) for _, c in groups], np.uint8)
            rgb = table[np.clip(codes, 0, len(table) - 1)]
        else:
            values = color_values(points, color_by)
            lo, hi = _value_range(values)
            lut = np.array([_hex_rgb(c) for c in pc.sample_colorscale("Viridis", list(np.linspace(0, 1, 256)))], np.uint8)
            scaled = np.nan_to_num((values - lo) / (hi - lo or 1.0), nan=0.0)
            rgb = lut[np.clip((scaled * 255).astype(np.int64), 0, 255)]
        rgb[dropped_before] = _hex_rgb(STYLE["dropped earlier"]["color"])
        x, y = _xy(points)
        image = density_image(x, y, rgb, x_range=x_range, y_range=y_range)
        images.append(dict(source=_png_uri(image), xref="x", yref="y", x=x_range[0], y=y_range[1],
                           sizex=x_range[1] - x_range[0], sizey=y_range[1] - y_range[0],
                           sizing="stretch", layer="below"))
        notes.append(f"all {len(points):,} examples are drawn as a density image ({DENSITY_PIXELS}×{DENSITY_PIXELS} "
                     "pixels; more opaque where more examples fall); poisons, drops and your selection as points")
        if kind == "category":
            for name, color in groups:  # legend entries for the image's colours
                fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=name,
                                           marker=dict(size=8, color=color), hoverinfo="skip"))
        else:
            fig.add_trace(_colorbar_trace(color_by, lo, hi))
    elif kind == "category":
        codes, groups = color_groups(kept, color_by, class_names)
        for code, (name, color) in enumerate(groups):
            rows = kept[codes == code]
            if len(rows):
                fig.add_trace(_scatter(rows, name=name, marker=dict(size=5, color=color, opacity=0.75)))
    else:
        values = color_values(kept, color_by)
        lo, hi = _value_range(values)
        fig.add_trace(_scatter(
            kept, name=f"examples (colour = {COLOR_FIELDS[color_by][0]})",
            marker=dict(size=5, color=values, colorscale="Viridis", cmin=lo, cmax=hi, opacity=0.8,
                        colorbar=dict(title=dict(text=COLOR_FIELDS[color_by][0], side="right"), thickness=12)),
            hover="<br>" + COLOR_FIELDS[color_by][0] + " %{marker.color:.3g}"))
    labels = dict(LABELS)
    if kept_label:
        labels["isolated, kept"] = kept_label
    is_medoid = points["is_medoid"].fillna(False).astype(bool).to_numpy() if "is_medoid" in points else None
    drop = points["drop"].astype(bool).to_numpy() if "drop" in points else None
    overlays = {
        "dropped earlier": None if density else points[dropped_before],
        "medoid": points[is_medoid & ~dropped_before] if is_medoid is not None else None,
        "dropped now": points[drop] if drop is not None else None,
        "isolated, kept": (points[points["isolated"].fillna(False).astype(bool).to_numpy() & ~drop]
                           if "isolated" in points and drop is not None else None),
        "poison": points[points["is_poison"].astype(bool)] if "is_poison" in points else None,
        "selected": points[points["index"].isin(list(selected))] if len(selected) else None,
        "found": points[points["index"] == found] if found is not None else None,
    }
    for key, rows in overlays.items():
        if rows is None or (len(rows) == 0 and key != "dropped now"):
            continue
        n_rows = len(rows)
        if density or key == "medoid":
            rows = _limit(rows, max_overlay, notes, labels[key])
        marker = dict(STYLE[key])
        if key == "medoid" and by_cluster and "cluster_size" in rows:
            marker = dict(symbol="star", size=(6 + 3 * np.sqrt(rows["cluster_size"].clip(lower=1))).to_numpy(np.float32),
                          color="#222222", line_color="#ffffff", line_width=0.5)
        visible = show_medoids if key == "medoid" and not by_cluster else True
        fig.add_trace(_scatter(rows, name=f"{labels[key]} ({n_rows:,})", marker=marker, legendgroup=key,
                               visible=visible))
    if target is not None and len(target):
        fig.add_trace(go.Scattergl(
            x=target["x"].to_numpy(np.float32), y=target["y"].to_numpy(np.float32), mode="markers", name=LABELS["target"],
            marker=dict(symbol="star", size=24, color="#ffd700", line=dict(color="#111111", width=1.5)),
            customdata=np.array([-1], np.int32),
            hovertemplate="<b>target</b> (test image)<br>gradient for the attacker's class<extra></extra>",
        ))
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10), font=PLOT_FONT,
        # no legend title (the page says how to use the legend): plotly.js 4 indents a horizontal
        # legend by its title's width and lets the last entries overflow the frame; y=-0.08 puts
        # it below the axis title (a paper fraction: about 30 px at this height)
        legend=dict(font=dict(size=12), itemsizing="constant", orientation="h", yanchor="top", y=-0.08,
                    xanchor="left", x=0),
        uirevision=f"map-{by_cluster}-{x_range}-{y_range}", plot_bgcolor="#fafafa", dragmode="pan",  # click = open; box / lasso from the modebar
        images=images, meta=dict(notes=notes),
    )
    axis_title = dict(size=12, color="#808495")  # quiet, as Streamlit's theme draws axis titles
    fig.update_xaxes(range=x_range, title_text=f"{method} 1", title_font=axis_title, title_standoff=4,
                     showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(range=y_range, title_text=f"{method} 2", title_font=axis_title, title_standoff=4,
                     showticklabels=False, zeroline=False, showgrid=False)
    return fig


HIDDEN = "#00000000"  # the last palette entry of point_layers: examples not shown
OVERLAY_LINE = {"dropped now": 2.5, "isolated, kept": 2.5, "selected": 2, "found": 4, "medoid": 1}


def point_layers(points: pd.DataFrame, *, class_names: list[str], color_by: str = "class",
                 shown: np.ndarray | None = None, selected: list[int] | tuple[int, ...] = (),
                 found: int | None = None, kept_label: str | None = None, show_medoids: bool = False,
                 max_overlay: int = MAX_OVERLAY) -> dict:
    """What the points renderer draws for one snapshot: a colour code per example and the overlays.

    Parameters
    ----------
    points : DataFrame, a row per example in index order (as for :func:`gradient_map_figure`)
    class_names : the name of each class
    color_by : a key of COLOR_FIELDS (a category field: a colour per category; a value field:
        256 steps of Viridis over its 1st-99th percentile)
    shown : bool ndarray of shape (n_examples,), the examples drawn (None: all); the others get
        the reserved last code (transparent, never hovered)
    selected, found, kept_label, show_medoids : as for :func:`gradient_map_figure`
    max_overlay : most points drawn per overlay group; more are sampled, and said so

    Returns
    -------
    dict with codes (uint8 ndarray of shape (n_examples,)), palette (a colour per code, the last
    transparent), names (a hover text per code), legend (entries for the HTML legend), overlays
    (list of {name, symbol, color, size, line, index}), notes (what was subsampled)
    """
    n = len(points)
    notes: list[str] = []
    dropped_before = points["dropped_before"].to_numpy(bool) if "dropped_before" in points else np.zeros(n, bool)
    kind = COLOR_FIELDS.get(color_by, ("", "category"))[1]
    if kind == "category":
        codes, groups = color_groups(points, color_by, class_names)
        if len(groups) > 250:
            raise ValueError(f"{color_by!r} has {len(groups)} categories; the points renderer draws at most 250")
        palette = [c for _, c in groups]
        names = [name for name, _ in groups]
        legend = [{"name": name, "color": color} for name, color in groups]
        codes = codes.astype(np.uint8)
    else:
        values = color_values(points, color_by)
        lo, hi = _value_range(values)
        palette = pc.sample_colorscale("Viridis", list(np.linspace(0, 1, 250)))
        palette = ["#{:02x}{:02x}{:02x}".format(*_hex_rgb(c)) for c in palette]
        scaled = np.clip(np.nan_to_num((values - lo) / (hi - lo or 1.0), nan=0.0), 0, 1)
        codes = np.round(scaled * 249).astype(np.uint8)
        label = COLOR_FIELDS[color_by][0]
        names = [f"{label} ≈ {lo + (hi - lo) * k / 249:.3g}" for k in range(250)]
        legend = [{"name": label, "colorbar": [palette[0], palette[124], palette[249]], "low": lo, "high": hi}]
    grey = len(palette)
    codes = np.where(dropped_before, grey, codes).astype(np.uint8)
    palette.append(STYLE["dropped earlier"]["color"])
    names.append(LABELS["dropped earlier"])
    legend.append({"name": f"{LABELS['dropped earlier']} ({int(dropped_before.sum()):,})",
                   "color": STYLE["dropped earlier"]["color"]})
    if shown is not None:
        codes[~np.asarray(shown, bool)] = len(palette)
    palette.append(HIDDEN)
    names.append("")
    labels = dict(LABELS)
    if kept_label:
        labels["isolated, kept"] = kept_label
    keep = np.ones(n, bool) if shown is None else np.asarray(shown, bool)
    col = points.get
    is_medoid = col("is_medoid")
    drop = col("drop")
    groups = {
        "medoid": is_medoid.fillna(False).astype(bool).to_numpy() & ~dropped_before if show_medoids and is_medoid is not None else None,
        "dropped now": drop.astype(bool).to_numpy() if drop is not None else None,
        "isolated, kept": (col("isolated").fillna(False).astype(bool).to_numpy() & ~drop.astype(bool).to_numpy()
                           if col("isolated") is not None and drop is not None else None),
        "poison": col("is_poison").astype(bool).to_numpy() if col("is_poison") is not None else None,
        "selected": np.isin(points["index"].to_numpy(), np.asarray(list(selected), np.int64)) if len(selected) else None,
        "found": (points["index"].to_numpy() == found) if found is not None else None,
    }
    overlays = []
    rng = np.random.default_rng(0)
    for key, mask in groups.items():
        if mask is None:
            continue
        index = points["index"].to_numpy()[mask & keep]
        if not len(index):
            continue
        total = len(index)
        if total > max_overlay:
            index = np.sort(rng.choice(index, size=max_overlay, replace=False))
            notes.append(f"{labels[key]}: {max_overlay:,} of {total:,} drawn (a random sample)")
        style = STYLE[key]
        overlays.append({"name": f"{labels[key]} ({total:,})", "symbol": style["symbol"], "color": style["color"],
                         "size": float(style["size"]), "line": OVERLAY_LINE.get(key, 1.0),
                         "edge": style.get("line_color"), "index": index.astype(int).tolist()})
    return {"codes": codes, "palette": palette, "names": names, "legend": legend, "overlays": overlays,
            "notes": notes}


def _value_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])  # a few extreme values do not wash out the rest
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _colorbar_trace(field: str, lo: float, hi: float) -> go.Scattergl:
    return go.Scattergl(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                        marker=dict(color=[lo], cmin=lo, cmax=hi, colorscale="Viridis",
                                    colorbar=dict(title=dict(text=COLOR_FIELDS[field][0], side="right"), thickness=12)))


def cluster_sizes_figure(clusters: pd.DataFrame, *, height: int = 260) -> go.Figure:
    """Bars of one class's cluster sizes at one snapshot, largest first, isolated ones in red.

    ``clusters``: a row per medoid with ``medoid``, ``cluster_size``, ``isolated``.
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


# --- overview ------------------------------------------------------------------------------


def _layout(fig: go.Figure, title: str, height: int = 330) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, font=PLOT_FONT,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.25),
                      hovermode="x unified")
    fig.update_xaxes(title_text="epoch")
    return fig


def accuracy_figure(metrics: pd.DataFrame, *, adv_name: str | None = None) -> go.Figure:
    """Clean test accuracy and, with an attack, the target's probability of the attacker's class."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["test_acc"], name="clean test accuracy",
                             mode="lines+markers", line=dict(color="#1f77b4")))
    if adv_name is not None and metrics["target_prob_adv"].notna().any():
        fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["target_prob_adv"], mode="lines+markers",
                                 name=f"target's probability of class {_text(adv_name)}", line=dict(color="#d62728", dash="dash")))
        hit = metrics[metrics["attack_success"] == 1]
        fig.add_trace(go.Scatter(x=hit["epoch"], y=np.ones(len(hit)) * 1.04, mode="markers", name="attack succeeds (target → " + _text(adv_name) + ")",
                                 marker=dict(symbol="x", color="#d62728", size=9)))
    fig.update_yaxes(range=[0, 1.08], title_text="fraction", tickformat=".0%")
    return _layout(fig, "Accuracy and the attack")


def drops_figure(metrics: pd.DataFrame, *, n_samples: int) -> go.Figure:
    """Examples dropped at each snapshot (bars) and in total (line), as counts."""
    snaps = metrics[metrics["n_new_drops"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=snaps["epoch"], y=snaps["n_new_drops"], name="dropped at this snapshot", marker_color="#ff7f0e"))
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["n_dropped"], name="dropped in total",
                             mode="lines+markers", line=dict(color="#555555")))
    fig.update_yaxes(title_text=f"examples (of {n_samples:,})", rangemode="tozero")
    return _layout(fig, "Examples dropped by the defense")


def detection_figure(metrics: pd.DataFrame, *, n_samples: int, n_poisons: int) -> go.Figure:
    """Left: share of poisons dropped vs share of all rows dropped (what a random drop of the same
    size catches on average). Right: precision of the drops vs the poison base rate."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Share of poisons dropped (recall)", "Poisons among the dropped (precision)"),
                        horizontal_spacing=0.12)
    recall = metrics["n_poison_dropped"] / max(n_poisons, 1)
    share = metrics["n_dropped"] / max(n_samples, 1)
    precision = (metrics["n_poison_dropped"] / metrics["n_dropped"].where(metrics["n_dropped"] > 0)).astype(float)
    base = n_poisons / max(n_samples, 1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=recall, name="poisons dropped", mode="lines+markers",
                             line=dict(color="#d62728")), row=1, col=1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=share, name="all rows dropped = a random drop's recall",
                             mode="lines", line=dict(color="#7f7f7f", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=precision, name="precision of the drops", mode="lines+markers",
                             line=dict(color="#9467bd")), row=1, col=2)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=np.full(len(metrics), base), name=f"poison base rate ({base:.1%}) = a random drop's precision",
                             mode="lines", line=dict(color="#7f7f7f", dash="dash")), row=1, col=2)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    top = max(2 * base, float(np.nanmax(precision.to_numpy())) if precision.notna().any() else 0.0) * 1.15
    fig.update_yaxes(range=[0, max(top, 0.01)], tickformat=".1%", row=1, col=2)
    fig = _layout(fig, "", height=380)
    fig.update_layout(margin=dict(t=60), legend=dict(y=-0.3))
    return fig


def auroc_figure(frame: pd.DataFrame) -> go.Figure:
    """ROC-AUC of the defense's score for poison vs clean at each snapshot, against chance (0.5)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["roc_auc"], mode="lines+markers", name="AUROC of the defense's score",
                             line=dict(color="#2ca02c")))
    fig.add_hline(y=0.5, line_dash="dot", line_color="#7f7f7f", annotation_text="chance (0.5)", annotation_position="bottom right")
    fig.update_yaxes(range=[0, 1], title_text="AUROC")
    return _layout(fig, "Are poisons scored as more suspicious?")


def timing_figure(metrics: pd.DataFrame) -> go.Figure:
    """Seconds per epoch: training vs evaluation, snapshot and defense (stacked)."""
    fig = go.Figure()
    parts = [("epoch_seconds", "training", "#1f77b4"), ("eval_seconds", "evaluation", "#aec7e8"),
             ("snapshot_seconds", "gradient snapshot", "#ff7f0e"), ("defense_seconds", "defense (selection)", "#d62728")]
    for col, name, color in parts:
        if col in metrics:
            fig.add_trace(go.Bar(x=metrics["epoch"], y=metrics[col], name=name, marker_color=color))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="seconds")
    return _layout(fig, "Where the time goes, per epoch")


# --- drift ---------------------------------------------------------------------------------


GROUP_NAMES = {"poison": "poisons", "selected": "selected examples"}


def tracks_figure(tracks: pd.DataFrame, band: pd.DataFrame | None, *, value: str, title: str,
                  y_title: str, log_y: bool = False, max_lines: int = 20) -> go.Figure:
    """Per-example lines of ``value`` across epochs, over the clean examples' middle half.

    tracks : epoch, index, group ('poison' / 'selected'), ``value``
    band : epoch, q25, q50, q75 of clean examples (or None)
    max_lines : lines drawn per group at most: the examples with the highest peak ``value``;
        the rest of a larger group is drawn as its middle half (a band), said in
        ``fig.layout.meta['notes']``
    """
    fig = go.Figure()
    if band is not None and len(band):
        fig.add_trace(go.Scatter(x=band["epoch"], y=band["q75"], mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=band["epoch"], y=band["q25"], mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor="rgba(127,127,127,0.25)", name="clean examples: middle half", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=band["epoch"], y=band["q50"], mode="lines", line=dict(color="#555555", dash="dot"),
                                 name="clean examples: median"))
    colors = {"poison": "#d62728", "selected": "#1f77b4"}
    fills = {"poison": "rgba(214,39,40,0.15)", "selected": "rgba(31,119,180,0.15)"}
    notes = []
    for group, rows in tracks.groupby("group", sort=True):
        name = GROUP_NAMES.get(group, str(group))
        drawn = most_extreme(rows, value, max_lines)
        n = rows["index"].nunique()
        if n > max_lines:  # the rest as one band: 205 lines were unreadable
            q = rows.groupby("epoch")[value].quantile([0.25, 0.75]).unstack()
            fig.add_trace(go.Scatter(x=q.index, y=q[0.75], mode="lines", line=dict(width=0), showlegend=False,
                                     hoverinfo="skip", legendgroup=f"{group}-band"))
            fig.add_trace(go.Scatter(x=q.index, y=q[0.25], mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor=fills.get(group, "rgba(0,0,0,0.1)"), legendgroup=f"{group}-band",
                                     name=f"{name}: middle half of all {n:,}", hoverinfo="skip"))
            highest = "most drifting" if value == "drift" else "highest"
            notes.append(f"{max_lines} {highest} of the {n:,} {name} drawn as lines; the band is the middle half "
                         f"of all {n:,}")
        for i, index in enumerate(drawn):
            line = rows[rows["index"] == index]
            fig.add_trace(go.Scatter(
                x=line["epoch"], y=line[value], mode="lines+markers",
                line=dict(color=colors.get(group, "#333"), width=1.3), marker=dict(size=5), opacity=0.8,
                name=name if i == 0 else f"example {index}", legendgroup=group, showlegend=i == 0,
                hovertemplate=f"{name}: example {index}<br>epoch %{{x}}: %{{y:.3g}}<extra></extra>"))
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    fig.update_yaxes(title_text=y_title)
    fig = _layout(fig, title, height=360)
    fig.update_layout(hovermode="closest", meta={"notes": notes})
    return fig


def most_extreme(rows: pd.DataFrame, value: str, n: int) -> list[int]:
    """The ``n`` example indices of ``rows`` (epoch, index, ``value``) with the highest peak
    ``value`` over the epochs, highest first (ties by index)."""
    peak = rows.groupby("index")[value].max().fillna(-np.inf)
    order = sorted(peak.items(), key=lambda kv: (-kv[1], kv[0]))
    return [int(i) for i, _ in order[:n]]


def distribution_figure(quantiles: pd.DataFrame, *, title: str, y_title: str, log_y: bool = False) -> go.Figure:
    """Box plots per epoch, poison against clean, from precomputed quantiles (whiskers: 5%-95%).

    quantiles : epoch, group, q05, q25, q50, q75, q95, n
    """
    fig = go.Figure()
    colors = {"clean": "#7f7f7f", "poison": "#d62728"}
    for group, rows in quantiles.groupby("group", sort=False):
        fig.add_trace(go.Box(
            x=rows["epoch"].astype(str), q1=rows["q25"], median=rows["q50"], q3=rows["q75"],
            lowerfence=rows["q05"], upperfence=rows["q95"], name=f"{group} (n={int(rows['n'].iloc[-1]):,})",
            marker_color=colors.get(str(group), "#1f77b4"), offsetgroup=str(group), boxpoints=False))
    fig.update_layout(boxmode="group")
    fig.update_xaxes(type="category")
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    fig.update_yaxes(title_text=y_title)
    fig = _layout(fig, title, height=360)
    fig.update_layout(hovermode="closest")
    return fig


# --- compare -------------------------------------------------------------------------------

# the two baselines in greys, every defense in one colour
DEFENSE_COLORS = {"clean": "#b0b0b0", "none": "#6f6f6f"}
DEFENSE_COLOR = "#1f77b4"
COMPARE_PANELS = (
    ("attack_success", "Attack success rate (target flipped)", "no target"),
    ("test_acc", "Clean test accuracy", "–"),
    ("recall", "Poisons dropped (recall)", "no poisons"),
    ("precision", "Precision of the drops", "nothing dropped"),
)
CHANCE_MARKER = dict(symbol="line-ew-open", size=30, color="#d62728", line=dict(width=3))


def _text(value: object) -> str:
    # run-controlled text in a plotly label or hover, which reads HTML (<a href>, <img>)
    from poisonlens.errors import one_line

    return html.escape(one_line(value, 80))


def defense_label_text(defense: str) -> str:
    """The defense's name as shown in plots ('clean' is marked as the control), HTML-escaped."""
    return "clean (control)" if defense == "clean" else _text(defense)


def wrap_label(text: str, width: int = 14) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (joined by ``<br>``);
    a word longer than ``width`` stays whole."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def percent_ticks(top: float, n: int = 5) -> tuple[list[float], list[str]]:
    """About ``n`` round tick values from 0 to ``top`` (a fraction) and their labels, with as
    many decimals as keep the labels distinct (plotly's ``.0%`` wrote 1%, 1%, 2%, 2%)."""
    top = max(float(top), 1e-4)
    raw = top / (n - 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    values = [float(round(i * step, 10)) for i in range(int(np.floor(top / step + 1e-9)) + 1)]
    for decimals in range(0, 6):
        text = [f"{v:.{decimals}%}" for v in values]
        if len(set(text)) == len(text):
            break
    return values, text


def _panel_top(summary: pd.DataFrame, col: str) -> float:
    """The largest value the precision panel draws (mean + std, or the chance marker)."""
    mean = summary[f"{col}_mean"].astype(float)
    high = (mean + summary[f"{col}_std"].astype(float).fillna(0)).clip(upper=1)
    extra = summary["base_rate_mean"].astype(float) if "base_rate_mean" in summary else high
    top = np.nanmax([high.max(), extra.max(), 0.0])
    return float(min(1.0, top * 1.1)) if np.isfinite(top) and top > 0 else 1.0


def defense_bars_figure(summary: pd.DataFrame, *, height: int = 640) -> go.Figure:
    """Mean ± std per defense of attack success, clean accuracy, recall and precision (error bars
    cut at 0 and 1; the hover gives the full std).

    ``summary``: poisonlens.compare.per_defense_summary (defense, n_runs, ``<x>_mean``, ``<x>_std``,
    random_recall_mean, base_rate_mean), a row per defense in drawing order. A missing mean is
    written on the axis (e.g. "nothing dropped") instead of an empty slot.
    """
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[title for _, title, _ in COMPARE_PANELS],
        vertical_spacing=0.2,
        horizontal_spacing=0.08,
    )
    # wrapped, not rotated: a rotated label reached into the subplot title below it
    x = [wrap_label(defense_label_text(d)) for d in summary["defense"]]
    colors = [DEFENSE_COLORS.get(d, DEFENSE_COLOR) for d in summary["defense"]]
    n_runs = summary["n_runs"].to_numpy()
    for i, (col, _, missing) in enumerate(COMPARE_PANELS):
        row, c = divmod(i, 2)
        mean = summary[f"{col}_mean"].astype(float)
        std = summary[f"{col}_std"].astype(float).fillna(0.0)
        fig.add_trace(
            go.Bar(
                x=x,
                y=mean,
                marker_color=colors,
                error_y=dict(  # ± std, cut at 0 and 1: every panel is a fraction
                    type="data",
                    array=np.minimum(std, 1 - mean),
                    arrayminus=np.minimum(std, mean),
                    visible=True,
                    color="#222222",
                    thickness=1.5,
                ),
                customdata=np.stack([std, n_runs], axis=1),
                hovertemplate="<b>%{x}</b><br>%{y:.1%} ± %{customdata[0]:.1%}"
                " over %{customdata[1]} runs<extra></extra>",
                showlegend=False,
            ),
            row=row + 1,
            col=c + 1,
        )
        for name in np.asarray(x, dtype=object)[mean.isna().to_numpy()]:
            fig.add_annotation(
                x=name,
                y=0,
                text=missing,
                textangle=-90,
                yanchor="bottom",
                showarrow=False,
                font=dict(color="#777777", size=11),
                row=row + 1,
                col=c + 1,
            )
        if col == "attack_success":  # "k/n" over every bar: a zero-height bar is invisible
            flipped = (mean * n_runs).round()
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=np.full(len(x), 1.12),
                    mode="text",
                    text=[
                        "" if np.isnan(k) else f"{k:.0f}/{n}"
                        for k, n in zip(flipped, n_runs, strict=True)
                    ],
                    textfont=dict(color="#333333", size=11),
                    hovertemplate="<b>%{x}</b>: the target flipped in %{text} runs<extra></extra>",
                    showlegend=False,
                ),
                row=1,
                col=1,
            )
    chance = [
        ("random_recall_mean", "recall", 2, 1, "a random drop of the same size (its recall)"),
        ("base_rate_mean", "precision", 2, 2, "share of poisons (a random drop's precision)"),
    ]
    for col, of, row, c, name in chance:
        y = summary[col].where(summary[f"{of}_mean"].notna()) if col in summary else None
        if y is not None and y.notna().any():
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="markers",
                    marker=CHANCE_MARKER,
                    name=name,
                    hovertemplate="<b>%{x}</b><br>" + name + ": %{y:.1%}<extra></extra>",
                ),
                row=row,
                col=c,
            )
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(range=[0, 1.19], row=1, col=1)
    for row, c in ((1, 2), (2, 1)):
        fig.update_yaxes(range=[0, 1.08], row=row, col=c)
    for i, (col, _, _) in enumerate(COMPARE_PANELS):
        row, c = divmod(i, 2)
        top = 1.0 if row == 0 or c == 0 else _panel_top(summary, col)
        values, text = percent_ticks(top)
        fig.update_yaxes(tickvals=values, ticktext=text, row=row + 1, col=c + 1)
        if top < 1.0:  # the precision panel: as high as its bars, with its own ticks
            fig.update_yaxes(range=[0, top * 1.05], row=row + 1, col=c + 1)
    n_lines = max((t.count("<br>") + 1 for t in x), default=1)
    fig.update_xaxes(type="category", tickangle=0)
    fig.update_layout(
        height=height + 14 * (n_lines - 1),
        font=PLOT_FONT,
        margin=dict(l=10, r=10, t=70, b=10),
        bargap=0.35,
        legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
        plot_bgcolor="#fafafa",
    )
    return fig


def overlap_figure(overlap: pd.DataFrame, *, max_tick_labels: int = 80) -> go.Figure:
    """Which poisons each run caught: a column per poison, a row per run (poisonlens.compare.poison_overlap,
    transposed); green = dropped by the run's last snapshot, grey = kept (missed)."""
    z = overlap.T.to_numpy(dtype=int)
    x = [str(i) for i in overlap.index]
    counts = overlap.sum(axis=0).astype(int)
    y = [f"{name}  ({n} of {len(overlap)})" for name, n in counts.items()]
    caught, missed = "#2ca02c", "#e6e6e6"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            zmin=0,
            zmax=1,
            colorscale=[[0, missed], [0.5, missed], [0.5, caught], [1, caught]],
            showscale=False,
            xgap=1,
            ygap=2,
            customdata=np.where(z == 1, "caught (dropped)", "missed (kept)"),
            hovertemplate="poison %{x}<br>%{y}<br><b>%{customdata}</b><extra></extra>",
        )
    )
    for name, color in (("caught: dropped by this run", caught), ("missed: kept", missed)):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker=dict(symbol="square", size=14, color=color, line_color="#999999"),
            )
        )
    fig.update_xaxes(
        type="category",
        title_text="poisons (training index), those caught by the most runs on the left",
        showticklabels=len(x) <= max_tick_labels,
        tickangle=-90,
        showgrid=False,
    )
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    fig.update_layout(
        height=150 + 30 * len(y),
        font=PLOT_FONT,
        margin=dict(l=10, r=10, t=10, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        plot_bgcolor="#ffffff",
    )
    return fig
