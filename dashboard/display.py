"""Values as a person reads them: internal markers of the run store never reach a table.

EPIC's snapshot columns use sentinels that mean "not applicable": ``cluster_size`` 0 and
``medoid`` -1 for an example that is not a medoid, ``isolated``/``is_medoid`` missing where no
selection ran, ``score`` missing before the drop window. Shown raw they read as "cluster size
0", "medoid -1" and "None". :func:`readable` turns them into empty cells and words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

YES_NO = {True: "yes", False: "no"}


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` for display: sentinels and missing values as empty text.

    Columns handled (by name, with ``_`` or a space): cluster size (0 or missing -> ''),
    medoid (negative or missing -> '', else 'example N'), is medoid / isolated / active / drop /
    trained on / dropped here / poison (booleans -> 'yes' / 'no', missing -> ''), score,
    suspicion score and EPIC's isolation (missing -> ''). Other columns are left as they are.

    Parameters
    ----------
    frame : DataFrame
        A table about to be shown (not modified).
    """
    out = frame.copy()
    for column in out.columns:
        key = str(column).replace(" ", "_")
        values = out[column]
        if key == "cluster_size":
            number = pd.to_numeric(values, errors="coerce")
            out[column] = [f"{int(v):,}" if np.isfinite(v) and v > 0 else "" for v in number]
        elif key == "medoid":
            number = pd.to_numeric(values, errors="coerce")
            out[column] = [f"example {int(v)}" if np.isfinite(v) and v >= 0 else "" for v in number]
        elif key in ("is_medoid", "isolated", "active", "drop", "trained_on", "dropped_here"):
            out[column] = [YES_NO.get(_bool(v), "") for v in values]
        elif key in ("score", "suspicion_score", "isolation"):
            number = pd.to_numeric(values, errors="coerce")
            out[column] = [f"{v:.3g}" if np.isfinite(v) else "" for v in number]
    return out


def _bool(value) -> bool | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return bool(value)


def expression_ui(table: pd.DataFrame, *, key: str, container=None, what: str = "rows") -> np.ndarray:
    """A filter expression over ``table``'s columns (poisonlens.filters: parsed safely, never
    evaluated by Python); returns the bool mask of the rows it keeps (all rows when empty or bad).

    A bad expression is one line of error under the box; the rows are then left unfiltered.

    Parameters
    ----------
    table : DataFrame
        The rows filtered; its columns are the names the expression may use.
    key : str
        The text box's widget key, with the page's prefix.
    container : Streamlit container or None
        Where the box goes (None: the page).
    what : str
        What the rows are, for the caption ('rows', 'examples').
    """
    import streamlit as st

    from poisonlens.errors import InputError
    from poisonlens.filters import column_key, parse_filter

    box = container or st
    names = ", ".join(column_key(c) for c in table.columns if c not in ("image", "x", "y"))
    text = box.text_input(
        "Filter expression", key=key, placeholder="e.g. label == 3 and drift > 4",
        help="Comparisons (==, !=, <, <=, >, >=, in [..]) of columns and values, joined by and / or / not. "
        f"Columns: {names}.",
    ).strip()
    if not text:
        return np.ones(len(table), bool)
    try:
        mask = parse_filter(text, table.columns).mask(table)
    except InputError as err:
        box.error(str(err))
        return np.ones(len(table), bool)
    box.caption(f"{int(mask.sum()):,} of {len(table):,} {what} match `{text}`.")
    return mask
