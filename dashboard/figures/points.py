"""What the map component's WebGL points renderer draws for one snapshot (past ``DENSITY_ABOVE``
examples on the Gradient space page): a one-byte colour code per example and the overlay groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonlens.dashboard.figures import map_style as style
from poisonlens.dashboard.figures.map_style import MapMarks, MapView

HIDDEN = "#00000000"  # the last palette entry of point_layers: examples not shown
OVERLAY_LINE = {"dropped now": 2.5, "isolated, kept": 2.5, "selected": 2, "found": 4, "medoid": 1}
MAX_CATEGORIES = 250  # a code is one byte, and the last codes are reserved (dropped, hidden)


def _category_codes(points: pd.DataFrame, color_by: str, class_names: list[str]) -> tuple[np.ndarray, list, list, list]:
    codes, groups = style.color_groups(points, color_by, class_names)
    if len(groups) > MAX_CATEGORIES:
        raise ValueError(f"{color_by!r} has {len(groups)} categories; the points renderer draws at most {MAX_CATEGORIES}")
    legend = [{"name": name, "color": color} for name, color in groups]
    return codes.astype(np.uint8), [c for _, c in groups], [name for name, _ in groups], legend


def _value_codes(points: pd.DataFrame, color_by: str) -> tuple[np.ndarray, list, list, list]:
    """256 steps of Viridis (250 used) over the field's 1st-99th percentile."""
    values = style.color_values(points, color_by)
    lo, hi = style.value_range(values)
    palette = ["#{:02x}{:02x}{:02x}".format(*style.hex_rgb(c)) for c in style.viridis(250)]
    scaled = np.clip(np.nan_to_num((values - lo) / (hi - lo or 1.0), nan=0.0), 0, 1)
    codes = np.round(scaled * 249).astype(np.uint8)
    label = style.COLOR_FIELDS[color_by][0]
    names = [f"{label} ≈ {lo + (hi - lo) * k / 249:.3g}" for k in range(250)]
    legend = [{"name": label, "colorbar": [palette[0], palette[124], palette[249]], "low": lo, "high": hi}]
    return codes, palette, names, legend


def _overlays(points: pd.DataFrame, view: MapView, marks: MapMarks, keep: np.ndarray,
              notes: list[str]) -> list[dict]:
    """The overlay groups as lists of example indices (those shown), sampled past ``view.max_overlay``."""
    labels = style.overlay_labels(view.kept_label)
    masks = style.overlay_masks(points, marks)
    del masks["dropped earlier"]  # a colour code here, not an overlay
    if isinstance(view.show_medoids, str) or not view.show_medoids:  # no legend-only state here
        masks["medoid"] = None
    overlays = []
    rng = np.random.default_rng(0)
    for key, mask in masks.items():
        if mask is None:
            continue
        index = points["index"].to_numpy()[mask & keep]
        if not len(index):
            continue
        total = len(index)
        if total > view.max_overlay:
            index = np.sort(rng.choice(index, size=view.max_overlay, replace=False))
            notes.append(f"{labels[key]}: {view.max_overlay:,} of {total:,} drawn (a random sample)")
        look = style.STYLE[key]
        overlays.append({"name": f"{labels[key]} ({total:,})", "symbol": look["symbol"], "color": look["color"],
                         "size": float(look["size"]), "line": OVERLAY_LINE.get(key, 1.0),
                         "edge": look.get("line_color"), "index": index.astype(int).tolist()})
    return overlays


def point_layers(points: pd.DataFrame, *, class_names: list[str], view: MapView | None = None,
                 marks: MapMarks | None = None, shown: np.ndarray | None = None) -> dict:
    """What the points renderer draws for one snapshot: a colour code per example and the overlays.

    Parameters
    ----------
    points : DataFrame
        A row per example in index order (as for
        :func:`poisonlens.dashboard.figures.gradient_map.gradient_map_figure`).
    class_names : list of str
        The name of each class.
    view : MapView or None
        (None: ``MapView(show_medoids=False)``) ``color_by`` (a category field: a colour per category; a value field: 250 steps of
        Viridis over its 1st-99th percentile), ``kept_label``, ``show_medoids`` (medoids are
        drawn only when it is True) and ``max_overlay``; ``by_cluster`` and ``density`` are not
        used here.
    marks : MapMarks or None
        The selection and the looked-up example (the target is drawn by the component; None:
        nothing marked).
    shown : bool ndarray of shape (n_examples,) or None
        The examples drawn (None: all); the others get the reserved last code (transparent,
        never hovered).

    Returns
    -------
    dict with codes (uint8 ndarray of shape (n_examples,)), palette (a colour per code, the last
    transparent), names (a hover text per code), legend (entries for the HTML legend), overlays
    (list of {name, symbol, color, size, line, edge, index}), notes (what was subsampled)
    """
    view, marks = view or MapView(show_medoids=False), marks or MapMarks()
    n = len(points)
    notes: list[str] = []
    dropped_before = style.flag(points, "dropped_before")
    dropped_before = np.zeros(n, bool) if dropped_before is None else dropped_before
    if style.COLOR_FIELDS.get(view.color_by, ("", "category"))[1] == "category":
        codes, palette, names, legend = _category_codes(points, view.color_by, class_names)
    else:
        codes, palette, names, legend = _value_codes(points, view.color_by)
    grey = style.STYLE["dropped earlier"]["color"]
    codes = np.where(dropped_before, len(palette), codes).astype(np.uint8)
    palette.append(grey)
    names.append(style.LABELS["dropped earlier"])
    legend.append({"name": f"{style.LABELS['dropped earlier']} ({int(dropped_before.sum()):,})", "color": grey})
    keep = np.ones(n, bool) if shown is None else np.asarray(shown, bool)
    codes[~keep] = len(palette)
    palette.append(HIDDEN)
    names.append("")
    overlays = _overlays(points, view, marks, keep, notes)
    return {"codes": codes, "palette": palette, "names": names, "legend": legend, "overlays": overlays,
            "notes": notes}
