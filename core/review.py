"""A person's review of a run's examples, kept in the run folder as ``review.parquet``.

One row per reviewed example (docs/run-format.md):

``index``   int64, the training example (a row of examples.parquet)
``verdict`` text, one of :data:`VERDICTS`: ``poison``, ``clean`` or ``unsure``
``note``    text, optional (at most :data:`MAX_NOTE` characters)
``who``     text, who decided (default: the OS user)
``when``    text, UTC time of the decision, ISO 8601 (``2026-12-07T01:50:00Z``)

Marking an example again replaces its row; :func:`unmark` removes it. The file is written
atomically through :mod:`poisonlens.store`, so a reader (a dashboard page, a trainer's own
run folder) sees the old or the new review, never half of one; training never touches it.
Reading it trusts nothing: the table's declared size is bounded by the store's reader, and
every value is checked (an index outside the run, an unknown verdict, an over-long note) before
anything uses it; a bad file is one :class:`poisonlens.store.DamagedFile`.

Two CSV files meet the review: ``poisonlens review --export/--import`` (:func:`review_csv`,
:func:`read_review_csv`) and ``poisonlens train --exclude`` (:func:`read_index_csv`).
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from poisonlens.errors import InputError
from poisonlens.limits import read_regular
from poisonlens.store import DamagedFile, Run, atomic_write_parquet, read_parquet

REVIEW = "review.parquet"
VERDICTS = ("poison", "clean", "unsure")
COLUMNS = ("index", "verdict", "note", "who", "when")
MAX_NOTE = 2_000  # characters of one note
MAX_WHO = 100  # characters of a reviewer's name
MAX_CSV_BYTES = 256 << 20  # a CSV of indices / verdicts: ~20 bytes a row, 10M rows at most
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def default_who() -> str:
    """The OS user's name, the default ``who`` of a verdict ('unknown' when there is none)."""
    try:
        return getpass.getuser()[:MAX_WHO] or "unknown"
    except (KeyError, OSError):  # no entry in the password database (a container's uid)
        return "unknown"


def now() -> str:
    """The UTC time now, as ``when`` stores it."""
    return time.strftime(_TIME, time.gmtime())


def empty_review() -> pd.DataFrame:
    """A review with no rows, and the columns and types of a stored one."""
    return pd.DataFrame(
        {"index": pd.Series([], dtype=np.int64), **{c: pd.Series([], dtype=object) for c in COLUMNS[1:]}}
    )


def check_review(frame: pd.DataFrame, n_samples: int, source: object) -> pd.DataFrame:
    """The review in ``frame``, checked; InputError naming ``source`` for the first problem.

    Parameters
    ----------
    frame : a table with at least the columns :data:`COLUMNS`
    n_samples : examples in the run; every index must be in [0, n_samples)
    source : the file or option named in an error

    Returns
    -------
    DataFrame with exactly :data:`COLUMNS`, one row per index (sorted), ``index`` int64,
    the others text
    """
    missing = [c for c in COLUMNS if c not in frame]
    if missing:
        raise InputError(source, f"no {missing[0]!r} column (a review has {', '.join(COLUMNS)})")
    index = pd.to_numeric(frame["index"], errors="coerce")
    bad = index.isna() | (index != np.floor(index)) | (index < 0) | (index >= n_samples)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            source, f"row {row + 1}: index {frame['index'].iloc[row]!r} is not an example of the run (0 to {n_samples - 1})"
        )
    out = pd.DataFrame({"index": index.to_numpy(np.int64)})
    for col, limit in (("verdict", 10), ("note", MAX_NOTE), ("who", MAX_WHO), ("when", 40)):
        values = frame[col].to_numpy(object)
        for row, value in enumerate(values):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                values[row] = ""
            elif not isinstance(value, str):
                raise InputError(source, f"row {row + 1}: {col} is not text ({type(value).__name__})")
            elif len(value) > limit:
                raise InputError(source, f"row {row + 1}: {col} longer than {limit:,} characters")
        out[col] = values
    wrong = ~out["verdict"].isin(VERDICTS)
    if wrong.any():
        row = int(np.flatnonzero(wrong.to_numpy())[0])
        raise InputError(
            source, f"row {row + 1}: verdict {out['verdict'].iloc[row]!r} is not one of {', '.join(VERDICTS)}"
        )
    if out["index"].duplicated().any():
        dup = int(out.loc[out["index"].duplicated(), "index"].iloc[0])
        raise InputError(source, f"index {dup} has two verdicts")
    return out.sort_values("index", kind="stable").reset_index(drop=True)


def read_review(run: Run) -> pd.DataFrame:
    """The run's review (:func:`empty_review` when nobody has reviewed it yet).

    Parameters
    ----------
    run : the run, whose review.parquet is read (at most one row per example)

    Returns
    -------
    DataFrame with :data:`COLUMNS`, a row per reviewed example, sorted by index

    Raises
    ------
    DamagedFile
        When review.parquet is not a readable review of this run (the store's bounds, then
        :func:`check_review`'s).
    """
    path = run.file(REVIEW)
    if not path.exists():
        return empty_review()
    try:
        # text columns (verdict, note, who, when), at most one row per example of the run
        frame = read_parquet(path, root=Path(run.path), max_rows=_n_samples(run), text=True)
    except FileNotFoundError:  # removed between the check and the read
        return empty_review()
    except DamagedFile:
        raise
    except Exception as err:  # pyarrow's own errors: a damaged file, not a bug here
        raise DamagedFile(path, f"damaged Parquet file ({str(err).splitlines()[0][:120]})") from err
    try:
        return check_review(frame, _n_samples(run), path)
    except InputError as err:
        raise DamagedFile(path, err.problem) from None


def _n_samples(run: Run) -> int:
    return len(run.examples()["index"])


def _write(run: Run, review: pd.DataFrame) -> None:
    review = review.sort_values("index", kind="stable").reset_index(drop=True)
    atomic_write_parquet(Path(run.path) / REVIEW, review[list(COLUMNS)])


def mark(
    run: Run,
    indices: Iterable[int],
    verdict: str,
    *,
    note: str = "",
    who: str | None = None,
    when: str | None = None,
) -> pd.DataFrame:
    """Record ``verdict`` for ``indices`` (replacing their earlier verdicts) and save the review.

    Parameters
    ----------
    run : the run whose examples these are
    indices : example indices, each in [0, n_samples)
    verdict : {'poison', 'clean', 'unsure'}
    note : optional text (at most MAX_NOTE characters)
    who : the reviewer (default: :func:`default_who`)
    when : ISO 8601 UTC time (default: now)

    Returns
    -------
    DataFrame, the whole review after the change

    Raises
    ------
    InputError
        For an index outside the run, an unknown verdict, or an over-long note or name.
    """
    indices = np.unique(np.asarray(list(indices), dtype=np.int64))
    rows = pd.DataFrame(
        {
            "index": indices,
            "verdict": verdict,
            "note": note or "",
            "who": who or default_who(),
            "when": when or now(),
        }
    )
    return merge(run, rows, source="review")


def merge(run: Run, rows: pd.DataFrame, *, source: object) -> pd.DataFrame:
    """Add the checked ``rows`` to the run's review (a row per index replaces the old one) and save.

    Parameters
    ----------
    run : the run
    rows : a table with :data:`COLUMNS`
    source : named in an error about ``rows``

    Returns
    -------
    DataFrame, the whole review after the change
    """
    rows = check_review(rows, _n_samples(run), source)
    old = read_review(run)
    review = pd.concat([old[~old["index"].isin(rows["index"])], rows], ignore_index=True)
    _write(run, review)
    return review.sort_values("index", kind="stable").reset_index(drop=True)


def unmark(run: Run, indices: Iterable[int]) -> pd.DataFrame:
    """Remove the verdicts of ``indices`` and save the review.

    Parameters
    ----------
    run : the run whose examples these are
    indices : example indices; one without a verdict is ignored

    Returns
    -------
    DataFrame, the whole review after the change
    """
    drop = set(int(i) for i in indices)
    old = read_review(run)
    review = old[~old["index"].isin(drop)]
    _write(run, review)
    return review.reset_index(drop=True)


def verdicts(review: pd.DataFrame, n_samples: int) -> np.ndarray:
    """Each example's verdict, '' for an example not reviewed.

    Parameters
    ----------
    review : a review (:data:`COLUMNS`), e.g. from :func:`read_review`
    n_samples : examples in the run; a review row with a larger index is left out

    Returns
    -------
    object ndarray of shape (n_samples,) holding 'poison', 'clean', 'unsure' or ''
    """
    out = np.full(n_samples, "", dtype=object)
    keep = review["index"].to_numpy() < n_samples
    out[review["index"].to_numpy()[keep]] = review["verdict"].to_numpy()[keep]
    return out


def summary(review: pd.DataFrame) -> str:
    """A review in one line: '3 poison, 1 clean, 0 unsure' (or 'not reviewed yet').

    Parameters
    ----------
    review : a review (:data:`COLUMNS`)

    Returns
    -------
    str, the count of each verdict in :data:`VERDICTS` order
    """
    if review.empty:
        return "not reviewed yet"
    counts = review["verdict"].value_counts()
    return ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)


# --- CSV files ------------------------------------------------------------------------------


def review_csv(review: pd.DataFrame) -> str:
    """The review as spreadsheet-safe CSV text (what ``poisonlens review --export`` writes).

    Parameters
    ----------
    review : a review (:data:`COLUMNS`; other columns are left out)

    Returns
    -------
    str, a header line and a line per row; a cell that a spreadsheet would run as a formula
    is prefixed with ``'`` (:func:`read_review_csv` takes it off again)
    """
    from poisonlens.export import to_safe_csv

    return to_safe_csv(review[list(COLUMNS)])


def _csv_rows(data: bytes, source: object) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a UTF-8 CSV file's bytes; InputError naming ``source`` otherwise."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(source, f"not UTF-8 text (byte {err.start})") from None
    if "\x00" in text:
        raise InputError(source, "not a CSV file (holds NUL bytes)")
    csv.field_size_limit(MAX_NOTE * 4 + 64)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise InputError(source, f"not a CSV file ({err})") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise InputError(source, "empty file: expected a header line with an 'index' column")
    header = [cell.strip() for cell in rows[0]]
    return header, [r for r in rows[1:] if any(cell.strip() for cell in r)]


def _unescape(value: str) -> str:
    # to_safe_csv prefixed a formula-like cell with "'": take it off again on the way back
    return value[1:] if value.startswith("'") and value[1:2] in _FORMULA and value[1:2] else value


def read_review_csv(path: str | Path, n_samples: int, *, source: object | None = None) -> pd.DataFrame:
    """Verdicts from a CSV with ``index`` and ``verdict`` columns (``note``, ``who``, ``when``
    optional; ``who`` defaults to the OS user, ``when`` to now), checked as a review.

    Parameters
    ----------
    path : the CSV file (a ``poisonlens review --export`` file, or one a script wrote)
    n_samples : examples in the run it is imported into
    source : named in errors (default: ``path``)

    Returns
    -------
    DataFrame with :data:`COLUMNS`
    """
    source = path if source is None else source
    header, rows = _csv_rows(read_regular(path, max_bytes=MAX_CSV_BYTES), source)
    for need in ("index", "verdict"):
        if need not in header:
            raise InputError(source, f"no {need!r} column in the header ({', '.join(header[:8])})")
    at = {name: header.index(name) for name in COLUMNS if name in header}
    defaults = {"note": "", "who": default_who(), "when": now()}
    table: dict[str, list] = {name: [] for name in COLUMNS}
    for line, row in enumerate(rows, start=2):
        for name in COLUMNS:
            if name in at:
                if at[name] >= len(row):
                    raise InputError(source, f"line {line}: no value for {name!r}")
                value = _unescape(row[at[name]].strip() if name in ("index", "verdict") else row[at[name]])
                table[name].append(value or defaults.get(name, value))
            else:
                table[name].append(defaults[name])
    if len(rows) > n_samples:
        raise InputError(source, f"{len(rows):,} rows for a run of {n_samples:,} examples")
    return check_review(pd.DataFrame(table), n_samples, source)


def read_index_csv(path: str | Path, *, source: object = "--exclude") -> tuple[np.ndarray, str]:
    """The example indices listed in a CSV with an ``index`` column, and the file's sha256.

    A review export (it has a ``verdict`` column) lists every verdict: only its ``poison`` rows
    are taken. Any other file (a suspects export, a script's list) gives every row's index.

    Parameters
    ----------
    path : the CSV file
    source : named in errors

    Returns
    -------
    indices : sorted unique int64 array
    sha256 : hex digest of the file's bytes

    Raises
    ------
    InputError
        One line: not a regular file, too large, not UTF-8 CSV, no ``index`` column, or a value
        that is not a non-negative integer.
    """
    where = f"{source} {path}"
    data = read_regular(path, max_bytes=MAX_CSV_BYTES)  # read once: the hash is of what was parsed
    header, rows = _csv_rows(data, where)
    if "index" not in header:
        raise InputError(where, f"no 'index' column in the header ({', '.join(header[:8])})")
    col = header.index("index")
    verdict = header.index("verdict") if "verdict" in header else None
    out = []
    for line, row in enumerate(rows, start=2):
        if verdict is not None and (verdict >= len(row) or row[verdict].strip() != "poison"):
            continue
        text = row[col].strip() if col < len(row) else ""
        if not text.isdigit() or len(text) > 18:
            raise InputError(where, f"line {line}: index {text!r} is not a non-negative integer")
        out.append(int(text))
    digest = hashlib.sha256(data).hexdigest()
    return np.unique(np.asarray(out, dtype=np.int64)), digest


def retrain_config(run: Run, exclude_file: str | Path) -> dict:
    """The run's own config (as JSON) with ``exclude`` set and ``tags.retrain_of`` naming it.

    Parameters
    ----------
    run : the reviewed run
    exclude_file : the CSV of the examples to leave out (:func:`write_poison_list`)

    Returns
    -------
    dict, for :meth:`poisonlens.config.TrainConfig.from_json`
    """
    config = dict(run.config)
    tags = config.get("tags") if isinstance(config.get("tags"), dict) else {}
    config["exclude"] = str(exclude_file)
    config["tags"] = {**tags, "retrain_of": run.name}
    return config


def write_poison_list(review: pd.DataFrame, path: str | Path) -> int:
    """Write the review's ``poison`` rows as CSV (``index,verdict,note,who,when``) to ``path``.

    The file is what ``poisonlens train --exclude`` reads.

    Parameters
    ----------
    review : a review (:data:`COLUMNS`); its 'clean' and 'unsure' rows are left out
    path : the CSV file, written atomically

    Returns
    -------
    int, the number of examples written
    """
    from poisonlens.store import atomic_write_bytes

    poison = review[review["verdict"] == "poison"]
    atomic_write_bytes(Path(path), review_csv(poison).encode())
    return len(poison)
