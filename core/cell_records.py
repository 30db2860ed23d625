"""The numbers of a finished grid cell, kept beside its run folder and outliving it.

A run folder of the whole of CIFAR-10 holds about 300 MB (the training images and a snapshot
per epoch); the numbers ``poisonlens evaluate`` reports from it fit in a few kilobytes. When a
cell finishes, evaluate writes them to ``<run>.cell.json`` beside the run folder (and, for a
clean control, its final weights to ``<run>.model.pt``, which every poison set's target is read
out of). A cell whose run folder has gone but whose record is there counts as finished: its
rows in the tables and, for an EPIC cell, the drop counts its random twin copies come from the
record. So a grid can be carried from one machine to the next, or its run folders deleted to
free the disk, without training anything again.

A record is a file a user may hand over like a run folder, and is read as one: bounded
(:func:`poisonlens.store.read_json`), no link followed, every field checked for its type and
range before it is used; its identity (scenario, poison set, defense, seed) must be the cell's.
"""

from __future__ import annotations

import math
from pathlib import Path

from poisonlens import runfs
from poisonlens.errors import InputError
from poisonlens.store import MAX_EPOCHS, atomic_write_bytes, atomic_write_json, read_json

FORMAT = "poisonlens.evaluate.cell"
VERSION = 1
RECORD_SUFFIX = ".cell.json"
MODEL_SUFFIX = ".model.pt"
MAX_RECORD_BYTES = 4 << 20  # a config, a dozen numbers and one short row per snapshot
MAX_MODEL_BYTES = 1 << 30
SUMMARY_KEYS = ("test_acc", "attack_success", "recall", "precision", "n_dropped", "roc_auc",
                "seconds", "target_prob_adv")
DETECTION_KEYS = ("epoch", "n_suspect", "precision", "recall", "roc_auc")
IDENTITY_KEYS = ("scenario", "poison_set", "defense", "seed")
MAX_COUNT = 1 << 40  # examples: far above any data set poisonlens reads
# What each number may be: (low, high, whole number, may be null). A rate is a share; success
# is 0 or 1 (a flip or not); counts and epochs are whole; time is not negative.
_SHARE = (0.0, 1.0, False, True)
RANGES = {
    "test_acc": _SHARE, "recall": _SHARE, "precision": _SHARE, "roc_auc": _SHARE,
    "target_prob_adv": _SHARE, "attack_success": (0, 1, True, True),
    "n_dropped": (0, MAX_COUNT, True, True), "seconds": (0.0, math.inf, False, True),
    "epoch": (0, MAX_EPOCHS, True, False), "n_suspect": (0, MAX_COUNT, True, False),
}


def record_path(run_dir: Path) -> Path:
    """``<run>.cell.json``: the record of the cell trained in ``run_dir``."""
    return run_dir.with_name(run_dir.name + RECORD_SUFFIX)


def model_path(run_dir: Path) -> Path:
    """``<run>.model.pt``: the final weights a clean control's record keeps."""
    return run_dir.with_name(run_dir.name + MODEL_SUFFIX)


def _number(value) -> float | None:
    """JSON has no NaN: a missing number (no poisons, no drops) is written as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_record(
    run_dir: Path,
    *,
    identity: dict,
    config: dict,
    summary: dict,
    detection: list[dict],
    drops: dict[int, int],
    model: bytes | None = None,
) -> None:
    """Write the record of a finished cell beside its run folder (atomically, never through a link).

    Parameters
    ----------
    run_dir : Path
        The cell's run folder (the record goes to its parent).
    identity : dict
        ``scenario``, ``poison_set``, ``defense``, ``seed``: the run's tags.
    config : dict
        The run's TrainConfig as JSON (run.json's ``config``).
    summary : dict
        :func:`poisonlens.evaluate.run_summary` of the run.
    detection : list of dict
        One row per snapshot (:func:`poisonlens.evaluate.detection_rows`, less the identity).
    drops : dict
        {epoch: examples dropped at that snapshot}.
    model : bytes, optional
        The run's final weights (``model.pt``), kept for a clean control.
    """
    if model is not None:
        atomic_write_bytes(model_path(run_dir), model, root=run_dir.parent)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "run": run_dir.name,
        "identity": {k: identity[k] for k in IDENTITY_KEYS},
        "config": config,
        "summary": {k: _number(summary[k]) for k in SUMMARY_KEYS},
        "detection": [{k: _number(row[k]) for k in DETECTION_KEYS} for row in detection],
        "drops": [[int(e), int(n)] for e, n in sorted(drops.items())],
        "model": model is not None,
    }
    atomic_write_json(record_path(run_dir), record, root=run_dir.parent)


def remove_record(run_dir: Path) -> None:
    """Delete a cell's record and kept model (a cell trained again from scratch)."""
    for path in (record_path(run_dir), model_path(run_dir)):
        runfs.remove(path.parent, (path.name,))


def has_record(run_dir: Path) -> bool:
    """True when ``<run>.cell.json`` is there (a regular file, not a link)."""
    return runfs.kind(run_dir.parent, record_path(run_dir).name) == "file"


def read_record(run_dir: Path, identity: dict) -> dict:
    """The checked record of the cell trained in ``run_dir``.

    Parameters
    ----------
    run_dir : Path
        The cell's run folder (it need not exist any more).
    identity : dict
        The cell's ``scenario``, ``poison_set``, ``defense`` and ``seed``; the record must
        name the same.

    Returns
    -------
    dict
        ``identity``, ``config``, ``summary`` (floats, NaN where null), ``detection`` (list of
        dicts), ``drops`` ({epoch: count}), ``run`` (str) and ``model`` (the kept weights'
        path, or None).

    Raises
    ------
    InputError
        Naming the record, when it is missing, too large, not this format or version, names
        another cell, or holds a value of the wrong type or out of range.
    """
    path = record_path(run_dir)
    try:
        raw = read_json(path, max_bytes=MAX_RECORD_BYTES)
    except FileNotFoundError:
        raise InputError(path, "missing file") from None
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise InputError(path, f"not a {FORMAT} record of version {VERSION}")
    ident = raw.get("identity")
    if not isinstance(ident, dict) or any(
        type(ident.get(k)) is not type(identity[k]) or ident.get(k) != identity[k] for k in IDENTITY_KEYS
    ):
        raise InputError(path, f"records another cell ({ident!r}), not {identity!r}")
    if not isinstance(raw.get("config"), dict):
        raise InputError(path, "'config' is not an object")
    summary = _numbers(raw.get("summary"), SUMMARY_KEYS, path, "summary")
    detection = raw.get("detection")
    if not isinstance(detection, list) or len(detection) > MAX_EPOCHS + 1:
        raise InputError(path, f"'detection' is not a list of at most {MAX_EPOCHS + 1:,} rows")
    rows = [_numbers(row, DETECTION_KEYS, path, "detection") for row in detection]
    drops = raw.get("drops")
    if not isinstance(drops, list) or len(drops) > MAX_EPOCHS + 1 or not all(
        isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p)
        and 0 <= p[0] <= MAX_EPOCHS and 0 <= p[1] <= MAX_COUNT for p in drops
    ):
        raise InputError(path, "'drops' is not a list of [epoch, count] pairs of whole numbers")
    if len({e for e, _ in drops}) != len(drops):
        raise InputError(path, "'drops' names an epoch twice")
    total = sum(n for _, n in drops)
    if math.isfinite(summary["n_dropped"]) and total != summary["n_dropped"]:
        raise InputError(path, f"'drops' add up to {total:,}, but 'summary.n_dropped' says "
                               f"{summary['n_dropped']:,.0f}")
    run = raw.get("run")
    if type(raw.get("model")) is not bool or not isinstance(run, str):
        raise InputError(path, "'model' is not true/false or 'run' is not text")
    if run != run_dir.name:
        raise InputError(path, f"records the run {run[:200]!r}, not {run_dir.name!r} beside it")
    return {
        "identity": dict(identity),
        "config": raw["config"],
        "summary": summary,
        "detection": rows,
        "drops": {e: n for e, n in drops},
        "run": run[:200],
        "model": model_path(run_dir) if raw["model"] else None,
    }


def _numbers(obj, keys: tuple[str, ...], path: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(path, f"'{what}' is not an object")
    out = {}
    for key in keys:
        value = obj.get(key)
        low, high, whole, nullable = RANGES[key]
        if value is None and nullable:
            out[key] = float("nan")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(path, f"'{what}.{key}' is not a number")
        value = float(value)
        if not (low <= value <= high) or (whole and not value.is_integer()):
            kind = "a whole number" if whole else "a number"
            raise InputError(path, f"'{what}.{key}' must be {kind} in [{low:g}, {high:g}], got {value:g}")
        out[key] = value
    return out
