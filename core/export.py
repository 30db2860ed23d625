"""The suspects table: examples dropped or flagged up to an epoch, as the CSV users export.

``poisonlens export`` and the dashboard's download button both call :func:`suspects_table`
and :func:`to_safe_csv`, so the two files are the same byte for byte.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.store import Run

# Leading characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

DECISION_COLUMNS = ("score", "suspect", "medoid", "cluster_size", "is_medoid", "isolated")
SNAPSHOT_COLUMNS = ("loss", "confidence", "prediction", *DECISION_COLUMNS)


def snapshot_at(run: Run, epoch: int | None) -> int | None:
    """The latest snapshot epoch at or before ``epoch`` (the last one when ``epoch`` is None)."""
    epochs = run.snapshot_epochs()
    if epoch is not None:
        epochs = [e for e in epochs if e <= epoch]
    return epochs[-1] if epochs else None


def suspects_table(
    run: Run, epoch: int | None = None, *, include_flagged: bool = True
) -> pd.DataFrame:
    """Examples dropped up to ``epoch`` and (optionally) flagged by the defense at that snapshot.

    Ranked most suspicious first: dropped before flagged, then by ``score`` (higher = more
    suspicious), then by index. Columns: rank, index, label, class_name, is_poison, base_index,
    dropped_epoch (-1 when not dropped), flagged, then the snapshot's decision columns.
    """
    at = snapshot_at(run, epoch)
    examples = run.examples()
    if at is None:
        return pd.DataFrame(columns=["rank", *examples.columns, "dropped_epoch", "flagged"])
    available = set(run.snapshot_columns(at))
    cols = ["dropped_epoch", *[c for c in SNAPSHOT_COLUMNS if c in available]]
    snap = run.snapshot(at, columns=cols)
    table = pd.concat([examples.reset_index(drop=True), snap.reset_index(drop=True)], axis=1)
    class_names = run.class_names
    if class_names:
        table.insert(
            2, "class_name", np.asarray(class_names, dtype=object)[table["label"].to_numpy()]
        )
    flagged = table["suspect"].to_numpy(bool) if "suspect" in table else np.zeros(len(table), bool)
    table["flagged"] = flagged
    keep = (table["dropped_epoch"] >= 0) | (flagged if include_flagged else False)
    table = table[keep].copy()
    table["_dropped"] = table["dropped_epoch"] >= 0
    score = table["score"] if "score" in table else pd.Series(np.nan, index=table.index)
    table["_score"] = score.fillna(-np.inf)
    table = table.sort_values(["_dropped", "_score", "index"], ascending=[False, False, True])
    table = table.drop(columns=["_dropped", "_score", "suspect"], errors="ignore")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def neutralise_formula(value):
    """Prefix a text cell with ``'`` when a spreadsheet would read it as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_safe_csv(frame: pd.DataFrame) -> str:
    """RFC 4180 CSV text in which no cell can be read as a formula (text cells escaped; numbers stay numbers)."""
    safe = frame.copy()
    safe.columns = [neutralise_formula(str(c)) for c in safe.columns]
    for col in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[col]):
            safe[col] = safe[col].map(neutralise_formula)
    # CRLF (RFC 4180) so that a cell holding a bare CR is quoted too.
    return safe.to_csv(index=False, lineterminator="\r\n")
