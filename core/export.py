"""The suspects table: examples dropped or flagged up to an epoch, as the CSV users export.

``poisonlens export`` and the dashboard's Suspects table and download all call
:func:`suspects_table` (and :func:`to_safe_csv`), so they hold the same rows, byte for byte.

The ranking rule: an example dropped at an earlier snapshot is inactive at later ones (no score,
no cluster), so every snapshot column of a dropped example is read from the snapshot that
dropped it (its ``dropped_epoch``); an example flagged but not dropped is described by the
chosen snapshot. Dropped examples come first, then flagged ones; within each, the higher the
``score``, the higher the rank (NaN last), ties by index.

``drift`` (:mod:`poisonlens.drift`) is read at the same snapshot as the other facts, and
``prediction`` is the predicted class's name when the run names its classes (its number
otherwise), like ``class_name`` for the label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonlens.drift import drift_scores
from poisonlens.errors import InputError
from poisonlens.store import Run

# Leading characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Columns every snapshot has, whatever the defense (docs/run-format.md), described once.
FACT_COLUMNS = {
    "loss": "cross-entropy of the example at the snapshot",
    "confidence": "the model's probability of the example's label",
    "prediction": "the class the model predicted",
    "score": "the defense's suspicion score (higher = more suspicious)",
}
DRIFT_DESCRIPTION = (
    "distance from its own class at that snapshot, over the class's median (1 = typical; "
    "see the Drift page)"
)
# Snapshot columns that are not facts about a decision: identity, gradients, the decision itself.
_NOT_DEFENSE = {"index", "label", "active", "suspect", "drop", "dropped_epoch", *FACT_COLUMNS}


def defense_columns(run: Run, epoch: int) -> dict[str, str]:
    """The defense's own output columns present in the snapshot of ``epoch``, with descriptions.

    Read from the defense's declaration (``poisonlens.defense.output_columns(name)``) when it has one;
    otherwise every snapshot column that is not one of the format's own (docs/run-format.md),
    with an empty description. Nothing here names a particular defense's columns.

    Parameters
    ----------
    run : Run
        The run; its config names the defense.
    epoch : int
        A snapshot epoch of the run.

    Returns
    -------
    dict
        Column name -> description, in the declaration's (or the snapshot's) order.
    """
    available = run.snapshot_columns(epoch)
    declared = _declared_columns(str(run.config.get("defense", "")))
    if declared is not None:
        return {c: str(d) for c, d in declared.items() if c in available and c not in _NOT_DEFENSE}
    return {c: "" for c in available if c not in _NOT_DEFENSE and not c.startswith(("g_", "emb_"))}


def _declared_columns(defense: str) -> dict[str, str] | None:
    try:
        from poisonlens.defense import output_columns
    except ImportError:  # a defense registry without declarations
        return None
    try:
        return dict(output_columns(defense))
    except (KeyError, ValueError, LookupError):  # a run made by a defense this version lacks
        return None


def column_descriptions(run: Run, epoch: int) -> dict[str, str]:
    """What each snapshot column of the suspects table means (for table headers and docs).

    Parameters
    ----------
    run, epoch
        As for :func:`defense_columns`.

    Returns
    -------
    dict
        Column name -> description: the facts, drift, the defense's columns, the review.
    """
    declared = _declared_columns(str(run.config.get("defense", ""))) or {}
    score = {"score": str(declared["score"])} if "score" in declared else {}
    return {
        **FACT_COLUMNS,
        "drift": DRIFT_DESCRIPTION,
        **score,
        **defense_columns(run, epoch),
        **REVIEW_COLUMNS,
    }


def check_epoch(run: Run, epoch: int | None, *, source: str = "epoch") -> int:
    """The snapshot epoch to rank at: ``epoch``, or the last snapshot when None.

    Raises InputError naming ``source`` (e.g. ``--epoch``) and listing the snapshot epochs when
    ``epoch`` has no snapshot, or when the run has none at all.

    Parameters
    ----------
    run : Run
        The run whose snapshots are listed.
    epoch : int or None
        The epoch asked for; None: the last snapshot.
    source : str
        The option named in the message.

    Returns
    -------
    int
    """
    epochs = run.snapshot_epochs()
    if not epochs:
        raise InputError(
            run.path, "the run has no gradient snapshot, so nothing was dropped or flagged"
        )
    if epoch is None:
        return epochs[-1]
    if epoch not in epochs:
        raise InputError(
            source, f"{epoch}: no snapshot at this epoch; snapshots: {', '.join(map(str, epochs))}"
        )
    return int(epoch)


def suspects_table(
    run: Run, epoch: int | None = None, *, include_flagged: bool = True, skip_damaged: bool = False
) -> pd.DataFrame:
    """Examples dropped up to ``epoch`` and (optionally) flagged by the defense at that snapshot.

    Parameters
    ----------
    run : the run to read
    epoch : a snapshot epoch (default: the last snapshot); InputError for one without a snapshot
    include_flagged : also list examples the defense flagged at ``epoch`` but did not drop
    skip_damaged : when an earlier snapshot that dropped examples cannot be read, keep those
        rows with empty facts and name the file in ``table.attrs["damaged"]`` instead of
        raising :class:`poisonlens.store.DamagedFile`

    Returns
    -------
    DataFrame, a row per suspect, ranked as the module docstring says. Columns: rank, index,
    label, class_name (when the run names its classes), is_poison, base_index, dropped_epoch
    (-1 when not dropped), flagged, drift, then loss, confidence, prediction (a class name when
    the run names its classes), score and the defense's own columns (:func:`defense_columns`),
    each read at the snapshot that dropped the example; last the run's review: review (the
    verdict, '' when not reviewed), review_note, review_who, review_when.
    """
    at = check_epoch(run, epoch)
    examples = run.examples().reset_index(drop=True)
    facts = [c for c in FACT_COLUMNS if c in run.snapshot_columns(at)] + list(
        defense_columns(run, at)
    )
    current = run.snapshot(at, columns=["dropped_epoch", "suspect", *facts])
    dropped_epoch = current["dropped_epoch"].to_numpy(np.int64)
    flagged = (
        current["suspect"].fillna(False).to_numpy(bool)
        if "suspect" in current
        else np.zeros(len(current), bool)
    )
    keep = (dropped_epoch >= 0) | (flagged & include_flagged)
    table = current[facts].copy()
    # each kept row's facts come from the snapshot that dropped it (or this one); -1: not kept
    facts_epoch = np.where(keep, np.where(dropped_epoch >= 0, dropped_epoch, at), -1)
    drift, damaged = _read_facts(run, table, facts, facts_epoch, at, skip_damaged)
    table.insert(0, "drift", np.round(drift, 3))
    table.insert(0, "flagged", flagged)
    table.insert(0, "dropped_epoch", dropped_epoch)
    table = pd.concat([examples, table], axis=1)
    if run.class_names and "label" in table:
        _name_classes(table, run.class_names)
    table = _ranked(table[keep])
    _add_review(run, table, damaged, skip_damaged)
    table.attrs["damaged"] = damaged
    return table


def _read_facts(run: Run, table: pd.DataFrame, facts: list[str], facts_epoch: np.ndarray, at: int,
                skip_damaged: bool) -> tuple[np.ndarray, list[str]]:
    # Fill the rows of ``table`` whose facts_epoch is an earlier snapshot from it, and compute
    # every kept row's drift at its facts_epoch; returns the drift and the damaged files named
    # (when skip_damaged; their rows' facts are blanked).
    drift = np.full(len(table), np.nan)
    damaged: list[str] = []
    for e in np.unique(facts_epoch[facts_epoch >= 0]):
        rows = np.flatnonzero(facts_epoch == e)
        try:
            if e != at:
                have = [c for c in facts if c in run.snapshot_columns(int(e))]
                earlier = run.snapshot(int(e), columns=have)
                for col in have:
                    table.loc[rows, col] = earlier[col].to_numpy()[rows]
            drift[rows] = drift_at(run, int(e))[rows]
        except InputError as err:
            if not skip_damaged:
                raise
            damaged.append(str(err))
            _blank(table, rows, facts)
    return drift, damaged


def _name_classes(table: pd.DataFrame, class_names: list[str]) -> None:
    # A class_name column after label, and predictions as class names (None where missing);
    # classes past the run's names are named by their number.
    top = int(table["label"].max())
    if "prediction" in table and table["prediction"].notna().any():
        top = max(top, int(table["prediction"].max()))
    names = np.asarray(
        class_names + [str(c) for c in range(len(class_names), top + 1)], dtype=object
    )
    table.insert(table.columns.get_loc("label") + 1, "class_name", names[table["label"].to_numpy()])
    if "prediction" in table:
        predicted = table["prediction"].to_numpy()
        known = ~pd.isna(predicted)
        named = np.full(len(table), None, dtype=object)
        named[known] = names[predicted[known].astype(np.int64)]
        table["prediction"] = named


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    # Dropped first, then flagged; within each, higher score first (NaN last), ties by index.
    score = table["score"].to_numpy(np.float64) if "score" in table else np.full(len(table), np.nan)
    order = np.lexsort(
        (
            table["index"].to_numpy(),
            np.nan_to_num(-score, nan=np.inf),
            table["dropped_epoch"].to_numpy() < 0,
        )
    )
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


REVIEW_COLUMNS = {
    "review": "the verdict recorded in the run's review: poison, clean, unsure, or empty",
    "review_note": "the reviewer's note",
    "review_who": "who recorded the verdict",
    "review_when": "when (UTC)",
}


def _add_review(run: Run, table: pd.DataFrame, damaged: list[str], skip_damaged: bool) -> None:
    """Append the run's review (review.parquet) as the columns of ``REVIEW_COLUMNS``."""
    from poisonlens.review import read_review

    try:
        review = read_review(run).set_index("index")
    except InputError as err:
        if not skip_damaged:
            raise
        damaged.append(str(err))
        review = pd.DataFrame(columns=["verdict", "note", "who", "when"])
    found = review.reindex(table["index"].to_numpy())
    for col, src in zip(REVIEW_COLUMNS, ["verdict", "note", "who", "when"], strict=True):
        table[col] = found[src].fillna("").to_numpy(object)


def drift_at(run: Run, epoch: int) -> np.ndarray:
    """Every example's drift at the snapshot of ``epoch`` (:func:`poisonlens.drift.drift_scores`).

    Parameters
    ----------
    run : the run
    epoch : a snapshot epoch

    Returns
    -------
    drift : float64 array of shape (n_samples,)
    """
    grad_cols = [c for c in run.snapshot_columns(epoch) if c.startswith("g_")]
    extra = ["is_medoid"] if "is_medoid" in run.snapshot_columns(epoch) else []
    snap = run.snapshot(epoch, columns=["label", "active", *extra, *grad_cols])
    medoids = snap["is_medoid"].fillna(False).to_numpy(bool) if extra else None
    return drift_scores(
        snap[grad_cols].to_numpy(np.float32),
        snap["label"].to_numpy(),
        medoids=medoids,
        active=snap["active"].to_numpy(bool),
    )["drift"].to_numpy()


def _blank(table: pd.DataFrame, rows: np.ndarray, columns: list[str]) -> None:
    """Empty ``columns`` of ``rows`` (facts that could not be read), widening their types to hold NaN."""
    for col in columns:
        kind = table[col].dtype.kind
        if kind in "iu":
            table[col] = table[col].astype("float64")
        elif kind == "b":
            table[col] = table[col].astype(object)
        table.loc[rows, col] = np.nan


def neutralise_formula(value):
    """Prefix a text cell with ``'`` when a spreadsheet would read it as a formula.

    Parameters
    ----------
    value : object
        A cell; only a str starting with ``=``, ``+``, ``-``, ``@``, tab or CR is changed.

    Returns
    -------
    object
        ``value``, or ``"'" + value``.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_safe_csv(frame: pd.DataFrame) -> str:
    """RFC 4180 CSV text in which no cell can be read as a formula.

    Parameters
    ----------
    frame : DataFrame
        The table (e.g. :func:`suspects_table`); not changed. Text cells and column names
        are escaped with :func:`neutralise_formula`; numeric columns stay numbers.

    Returns
    -------
    str
        CSV with CRLF line ends and no index column.
    """
    safe = frame.copy()
    safe.columns = [neutralise_formula(str(c)) for c in safe.columns]
    for col in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[col]):
            safe[col] = safe[col].map(neutralise_formula)
    # CRLF (RFC 4180) so that a cell holding a bare CR is quoted too.
    return safe.to_csv(index=False, lineterminator="\r\n")
