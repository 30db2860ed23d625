"""From a chart selection to example indices: pure functions the dashboard and its tests share.

A box or lasso selection is read from its *shape* (Streamlit reports the rectangle's corners
and the lasso's vertices in data coordinates): every example whose position falls inside is
selected, computed here on the server. That holds at any size, including a map drawn as a
density image with no point per example, and does not depend on the browser echoing back
tens of thousands of points.

A click reports points, each with ``curve_number`` and ``point_index`` *within its trace*.
Colouring by class makes one trace per class, so ``point_index`` is not the example's index;
every trace therefore carries the example index in ``customdata``, and this is what is read
back here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def _inner(event: Mapping | None) -> Mapping:
    if not isinstance(event, Mapping):
        return {}
    inner = event.get("selection", event)
    return inner if isinstance(inner, Mapping) else {}


def selection_shapes(event: Mapping | None) -> list[tuple[str, np.ndarray]]:
    """The boxes and lassos of a Streamlit plotly selection event.

    Parameters
    ----------
    event : Mapping or None
        A Streamlit plotly selection event (or its ``selection`` part); anything else gives no shape.

    Returns
    -------
    list of (kind, vertices): kind is 'box' or 'lasso'; vertices float64 of shape (n, 2) (a box
    as its two opposite corners)
    """
    inner = _inner(event)
    shapes: list[tuple[str, np.ndarray]] = []
    for kind in ("box", "lasso"):
        for shape in inner.get(kind) or []:
            if not isinstance(shape, Mapping):
                continue
            try:
                xy = np.column_stack([np.asarray(shape["x"], float), np.asarray(shape["y"], float)])
            except (KeyError, TypeError, ValueError):
                continue
            if (kind == "box" and len(xy) >= 2) or (kind == "lasso" and len(xy) >= 3):
                shapes.append((kind, xy))
    return shapes


def inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Whether each point (x, y) lies inside the polygon (even-odd rule).

    Parameters
    ----------
    x, y : float ndarrays of shape (n_points,)
    vertices : float ndarray of shape (n_vertices, 2), the polygon (closed implicitly)

    Returns
    -------
    bool ndarray of shape (n_points,)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    inside = np.zeros(len(x), bool)
    px, py = vertices[:, 0], vertices[:, 1]
    qx, qy = np.roll(px, 1), np.roll(py, 1)
    for x1, y1, x2, y2 in zip(px, py, qx, qy, strict=True):
        crosses = (y1 > y) != (y2 > y)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return inside


def indices_in_shapes(
    shapes: list[tuple[str, np.ndarray]], x: np.ndarray, y: np.ndarray, index: np.ndarray
) -> list[int]:
    """Example indices whose map position falls inside any of ``shapes``, sorted.

    Parameters
    ----------
    shapes : from :func:`selection_shapes`
    x, y : float ndarrays of shape (n_points,), the positions of the examples on the map
    index : int ndarray of shape (n_points,), their example indices
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    hit = np.zeros(len(x), bool)
    for kind, xy in shapes:
        if kind == "box":
            (x0, x1), (y0, y1) = sorted(xy[:2, 0]), sorted(xy[:2, 1])
            hit |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        else:
            hit |= inside_polygon(x, y, xy)
    return sorted(int(i) for i in np.unique(np.asarray(index)[hit]))


def clicked_index(event: Mapping | None) -> int | None:
    """The example a click chose: the event has points but no box or lasso (None otherwise).

    Parameters
    ----------
    event : Mapping or None
        A Streamlit plotly selection event (or its ``selection`` part).
    """
    if selection_shapes(event):
        return None
    found = selection_to_indices(event)
    return found[0] if len(found) == 1 else None


def selection_to_indices(selection: Mapping | None) -> list[int]:
    """Example indices in a Streamlit plotly selection event, sorted and unique.

    Accepts the whole event (``{"selection": {"points": [...]}}``), its ``selection`` part, or
    a bare list of points. A point's index is the first value of its ``customdata``; points
    without one (or with a negative index, such as the target) are skipped.

    Parameters
    ----------
    selection : Mapping or None
        A Streamlit plotly selection event, its ``selection`` part, or None.
    """
    if not selection:
        return []
    if isinstance(selection, Mapping):
        inner = selection.get("selection", selection)
        points = inner.get("points", []) if isinstance(inner, Mapping) else []
    else:
        points = selection
    out: set[int] = set()
    for point in points or []:
        if not isinstance(point, Mapping):
            continue
        custom = point.get("customdata", point.get("custom_data"))
        if custom is None:
            continue
        value = custom[0] if isinstance(custom, list | tuple | np.ndarray) else custom
        try:
            index = int(value)
        except (TypeError, ValueError):
            continue
        if index >= 0:
            out.add(index)
    return sorted(out)


def update_selection(
    previous: Iterable[int], new: Iterable[int], *, mode: str = "replace"
) -> list[int]:
    """Combine a kept selection with a new one.

    Parameters
    ----------
    mode : {'replace', 'add', 'remove'}
    """
    prev, cur = set(int(i) for i in previous), set(int(i) for i in new)
    if mode == "replace":
        result = cur
    elif mode == "add":
        result = prev | cur
    elif mode == "remove":
        result = prev - cur
    else:
        raise ValueError(f"mode must be 'replace', 'add' or 'remove', got {mode!r}")
    return sorted(result)


def parse_indices(text: str, n_samples: int | None = None) -> list[int]:
    """Indices typed by a person: ``"3, 17 40-42"`` -> [3, 17, 40, 41, 42].

    Raises ValueError naming the first piece that is not an index or a range, or that is out
    of [0, n_samples).

    Parameters
    ----------
    text : str
        Indices and ranges, separated by commas or spaces (e.g. '12, 40-45').
    n_samples : int or None
        Indices must be below this (None: no upper bound).
    """
    out: set[int] = set()
    for piece in text.replace(",", " ").split():
        lo, sep, hi = piece.partition("-")
        try:
            start, stop = (int(lo), int(hi)) if sep else (int(piece), int(piece))
        except ValueError:
            raise ValueError(f"{piece!r} is not an index or a range like 10-20") from None
        if start < 0 or stop < start:
            raise ValueError(f"{piece!r} is not a valid index range")
        if n_samples is not None and stop >= n_samples:
            raise ValueError(f"{piece!r} is out of range: the run has {n_samples} examples")
        out.update(range(start, stop + 1))
    return sorted(out)
