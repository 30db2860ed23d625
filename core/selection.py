"""From a chart selection to example indices: pure functions the dashboard and its tests share.

A plotly chart reports a selection as points, each with ``curve_number`` and ``point_index``
*within its trace*. Colouring by class makes one trace per class, so ``point_index`` is not
the example's index; every trace therefore carries the example index as the first value of
``custom_data``, and this is what is read back here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def selection_to_indices(selection: Mapping | None) -> list[int]:
    """Example indices in a Streamlit plotly selection event, sorted and unique.

    Accepts the whole event (``{"selection": {"points": [...]}}``), its ``selection`` part, or
    a bare list of points. A point's index is the first value of its ``customdata``; points
    without one (or with a negative index, such as the target) are skipped.
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
