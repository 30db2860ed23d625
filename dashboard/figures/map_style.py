"""What a map draws and how: the overlay groups and their styles, class colours, colour fields.

Shared by the plotly map (:mod:`.gradient_map`) and the points renderer's layers (:mod:`.points`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors as pc

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


def text(value: object) -> str:
    """Run-controlled text made safe for a plotly label or hover, which reads HTML (<a href>, <img>).

    Parameters
    ----------
    value : object
        Anything a run folder controls (a class name, a defense name); made one line of at most
        80 characters, then HTML-escaped.
    """
    from poisonlens.errors import one_line

    return html.escape(one_line(value, 80))


def class_colors(n_classes: int) -> list[str]:
    """One colour per class, from a palette large enough for ``n_classes``.

    Parameters
    ----------
    n_classes : int
        How many classes: up to 10 get CLASS10 (no red, no grey), up to 24 plotly's Light24,
        more cycle through plotly's Alphabet.
    """
    palette = CLASS10 if n_classes <= 10 else pc.qualitative.Light24 if n_classes <= 24 else pc.qualitative.Alphabet
    return [palette[c % len(palette)] for c in range(n_classes)]


def _review_codes(points: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str]]]:
    verdicts = points["review"].to_numpy(object) if "review" in points else np.full(len(points), "", object)
    codes = np.select([verdicts == "poison", verdicts == "clean", verdicts == "unsure"], [1, 2, 3], 0)
    return codes.astype(np.int64), [("not reviewed", "#c7c7c7"), ("marked poison", "#d62728"),
                                    ("marked clean", "#2ca02c"), ("marked unsure", "#ff7f0e")]


def _dropped_epoch_codes(points: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str]]]:
    dropped = points["dropped_epoch"].to_numpy(np.int64)
    epochs = sorted(int(e) for e in np.unique(dropped[dropped >= 0]))
    # vectorised (a million rows): 0 = never dropped, else the rank of its epoch + 1
    codes = np.where(dropped >= 0, np.searchsorted(np.asarray(epochs, np.int64), dropped) + 1, 0).astype(np.int64)
    ramp = pc.sample_colorscale("Plasma", [0.1 + 0.8 * i / max(1, len(epochs) - 1) for i in range(len(epochs))])
    return codes, [("never dropped", "#c7c7c7")] + [(f"dropped at epoch {e}", c) for e, c in zip(epochs, ramp, strict=True)]


def color_groups(points: pd.DataFrame, field: str, class_names: list[str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Categories of ``field`` for colouring: (a code per row, [(name, colour)] per code).

    Parameters
    ----------
    points : DataFrame
        A row per example with the columns the field needs (label, prediction, is_poison,
        dropped_epoch, review).
    field : str
        A 'category' key of COLOR_FIELDS.
    class_names : list of str
        The name of each class (for 'class' and 'prediction').
    """
    n = len(points)
    if field in ("class", "prediction"):
        column = "label" if field == "class" else "prediction"
        codes = points[column].to_numpy(np.int64) if column in points else np.zeros(n, np.int64)
        colors = class_colors(len(class_names))
        return codes, [(f"{'class' if field == 'class' else 'predicted'} {text(name)}", colors[c])
                       for c, name in enumerate(class_names)]
    if field == "correct":
        codes = (points["prediction"].to_numpy() != points["label"].to_numpy()).astype(np.int64)
        return codes, [("predicted correctly", "#4c9f70"), ("predicted wrongly", "#d95f02")]
    if field == "poison":
        codes = points["is_poison"].to_numpy(bool).astype(np.int64)
        return codes, [("clean", "#8fa9c4"), ("poison", "#111111")]
    if field == "review":
        return _review_codes(points)
    if field == "dropped_epoch":
        return _dropped_epoch_codes(points)
    raise ValueError(f"{field!r} is not a category field; choose from {list(COLOR_FIELDS)}")


def color_values(points: pd.DataFrame, field: str) -> np.ndarray:
    """float32 values of a 'value' field for colouring (log10 for losses, drift, cluster sizes).

    Parameters
    ----------
    points : DataFrame
        A row per example; a missing ``field`` column gives NaN for every row.
    field : str
        A 'value' key of COLOR_FIELDS; those in LOG_FIELDS are drawn as log10 (0 and below: NaN).
    """
    values = points[field].to_numpy(np.float64) if field in points else np.full(len(points), np.nan)
    if field in LOG_FIELDS:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(np.where(values > 0, values, np.nan))
    return values.astype(np.float32)


def value_range(values: np.ndarray) -> tuple[float, float]:
    """The colour scale's range: the 1st to 99th percentile of the finite values, so a few
    extreme values do not wash out the rest ((0, 1) when none is finite).

    Parameters
    ----------
    values : float ndarray of shape (n_points,)
        The values coloured (NaN and infinities ignored).
    """
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def hex_rgb(color: str) -> tuple[int, int, int]:
    """A colour as (red, green, blue) bytes.

    Parameters
    ----------
    color : str
        '#rrggbb' or plotly's 'rgb(r, g, b)' / 'rgba(...)' (alpha ignored).
    """
    if color.startswith("rgb"):
        return tuple(int(float(v)) for v in color[color.index("(") + 1 : -1].split(",")[:3])
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))


def viridis(n: int) -> list[str]:
    """``n`` colours evenly spaced along Viridis, as plotly writes them ('rgb(...)' or '#...').

    Parameters
    ----------
    n : int
        How many colours (at least 2).
    """
    return pc.sample_colorscale("Viridis", list(np.linspace(0, 1, n)))


@dataclass(frozen=True)
class MapView:
    """How a map is drawn: what colours the examples and which overlays show.

    Attributes
    ----------
    color_by : a key of COLOR_FIELDS
    by_cluster : colour by EPIC cluster (one class's view) instead of by ``color_by``
    show_medoids : True, False or 'legendonly' (the points renderer draws medoids only for True)
    kept_label : legend text of isolated medoids not dropped (why they were kept), or None
    density : draw the examples as a density image (for very large runs) instead of a point each;
        poisons, drops and the selection are still points
    max_overlay : most points drawn per overlay group; more are sampled, and said so
    """

    color_by: str = "class"
    by_cluster: bool = False
    show_medoids: bool | str = "legendonly"
    kept_label: str | None = None
    density: bool = False
    max_overlay: int = MAX_OVERLAY


@dataclass(frozen=True)
class MapMarks:
    """What the user marked on a map.

    Attributes
    ----------
    selected : example indices to mark as selected
    found : an example index to ring (a looked-up example), or None
    target : DataFrame with one row of x, y (the target's gradient for the attacker's class), or None
    """

    selected: list[int] | tuple[int, ...] = ()
    found: int | None = None
    target: pd.DataFrame | None = None


def overlay_labels(kept_label: str | None) -> dict[str, str]:
    """The overlay groups' legend texts, with ``kept_label`` for isolated medoids left in training.

    Parameters
    ----------
    kept_label : str or None
        Why isolated medoids were kept at this snapshot (None: the generic text).
    """
    labels = dict(LABELS)
    if kept_label:
        labels["isolated, kept"] = kept_label
    return labels


def flag(points: pd.DataFrame, column: str) -> np.ndarray | None:
    """A boolean column as a bool ndarray of shape (n_points,) (missing values False), or None
    when ``points`` has no such column.

    Parameters
    ----------
    points : DataFrame
        A row per example.
    column : str
        The column's name (e.g. 'drop', 'is_medoid').
    """
    if column not in points:
        return None
    return points[column].fillna(False).astype(bool).to_numpy()


def overlay_masks(points: pd.DataFrame, marks: MapMarks) -> dict[str, np.ndarray | None]:
    """Which examples each overlay group holds, in drawing order (None: the run has no such group).

    Parameters
    ----------
    points : DataFrame
        A row per example with index and, where known, dropped_before, is_medoid, drop, isolated,
        is_poison.
    marks : MapMarks
        The selection and the looked-up example.

    Returns
    -------
    dict of group name (a key of STYLE) -> bool ndarray of shape (n_points,) or None
    """
    n = len(points)
    dropped_before = flag(points, "dropped_before")
    dropped_before = np.zeros(n, bool) if dropped_before is None else dropped_before
    is_medoid, drop, isolated = flag(points, "is_medoid"), flag(points, "drop"), flag(points, "isolated")
    index = points["index"].to_numpy()
    return {
        "dropped earlier": dropped_before,
        "medoid": is_medoid & ~dropped_before if is_medoid is not None else None,
        "dropped now": drop,
        "isolated, kept": isolated & ~drop if isolated is not None and drop is not None else None,
        "poison": flag(points, "is_poison"),
        "selected": np.isin(index, np.asarray(list(marks.selected), np.int64)) if len(marks.selected) else None,
        "found": index == marks.found if marks.found is not None else None,
    }
